"""Models and scorers for the paths: each model loaded once, weights copied into process memory.

Paths that share weights (kind, dtype, quantization, compile) share one loaded model, and the RSS
growth of each load is recorded so a path's peak memory can be reported as if it ran alone. Peers
(:mod:`lbnl.bench.peers`) are loaded here too, each once, and score through the same
:class:`~lbnl.reranker.Reranker` planning as lbnl's paths.

Every scorer also answers :meth:`hidden`: the final hidden states of one forward over given token ids at
given positions (the ``T<N>`` workloads), and records the hidden states its scoring calls read
(``captured``, keyed by prompt token ids up to the rerank token) so they can be compared with the
float32 reference (:meth:`Loader.reference_hidden`).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .memory import rss
from .paths import PathSpec
from .reference import ReferenceScorer


@contextmanager
def _capturing(model: Any, store: dict[tuple[int, ...], Any]) -> Iterator[None]:
    """Record the final hidden states lbnl's fast path reads, per prompt, while the block is active.

    :meth:`~lbnl.model.LBNLModel.encode` projects the selected hidden states of all its rows at once (each
    row: its embed tokens, then its rerank token); the instance's ``encode`` and ``project`` are wrapped for
    the duration to see them, and restored afterwards.
    """
    encode, project = model.encode, model.project
    seen: list[Any] = []

    def recording_project(hidden: Any) -> Any:
        seen.append(hidden)
        return project(hidden)

    def recording_encode(rows: Sequence[Sequence[int]], prefix: Any = None, pad_token_id: int = 0) -> Any:
        seen.clear()
        out = encode(rows, prefix=prefix, pad_token_id=pad_token_id)
        if len(seen) == 1:
            at = 0
            head = tuple(prefix.ids) if prefix is not None else ()
            for row in rows:
                n = sum(1 for t in row if t == model.embed_token_id) + 1
                store[head + tuple(int(t) for t in row)] = seen[0][at:at + n].detach().float()
                at += n
        return out

    model.encode, model.project = recording_encode, recording_project
    try:
        yield
    finally:
        del model.encode, model.project


class LbnlScorer:
    """lbnl's :class:`~lbnl.reranker.Reranker` with a path's settings, all queries in one ``rerank_many`` call."""

    def __init__(self, reranker: Any, attention: str = "auto"):
        self.reranker = reranker
        self.tokenizer = reranker.tokenizer
        self.attention = attention
        self.captured: dict[tuple[int, ...], Any] = {}
        self.description = ""

    def score(self, queries: list[str], documents: list[list[str]], max_doc_length: int) -> list[list[float]]:
        model = self.reranker.model
        model.attention = self.attention
        if self.reranker.fast_forward and getattr(model, "fast_path", False) and hasattr(model, "project"):
            with _capturing(model, self.captured):
                results = self.reranker.rerank_many(queries, documents, max_doc_length=max_doc_length)
        else:
            results = self.reranker.rerank_many(queries, documents, max_doc_length=max_doc_length)
        aligned = []
        for docs, ranked in zip(documents, results):
            row = [0.0] * len(docs)
            for r in ranked:
                row[r.index] = r.relevance_score
            aligned.append(row)
        return aligned

    def hidden(self, ids: Sequence[int], read: Sequence[int]) -> Any:
        """Final hidden states at ``read`` of one forward over ``ids``, as this path computes them (float32)."""
        import torch

        from ..engine import decode

        model = self.reranker.model
        model.attention = self.attention
        with torch.inference_mode():
            if self.reranker.fast_forward and model.fast_path:
                out, _, _ = decode(model.backbone, [list(ids)], select=[list(read)], compiled=model.compiled,
                                   attention=model.attention_kernel)
            else:
                out = model.hidden_states(torch.tensor([list(ids)], device=model.device))[0, list(read)]
        return out.float()


class PeerScorer(LbnlScorer):
    """A peer runtime scoring through lbnl's :class:`~lbnl.reranker.Reranker` (:class:`~lbnl.bench.peers.PeerModel`)."""

    def __init__(self, reranker: Any, backend: Any):
        super().__init__(reranker)
        self.backend = backend
        self.captured = reranker.model.captured
        self.description = backend.describe()
        self.activation_bytes = backend.activation_bytes

    def hidden(self, ids: Sequence[int], read: Sequence[int]) -> Any:
        import torch

        return torch.from_numpy(self.backend.hidden(list(ids), list(read))).float()


def load_projector(path: Path) -> Any:
    """The checkpoint's projector in float32: read from its safetensors when it has one (official layout),
    else from the loaded model."""
    import torch
    from safetensors import safe_open

    from ..model import build_projector

    weights: dict[str, Any] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            weights.update({k: f.get_tensor(k) for k in f.keys() if k.startswith("projector.")})
    if {"projector.0.weight", "projector.2.weight"} <= set(weights):
        w0, w2 = weights["projector.0.weight"], weights["projector.2.weight"]
        projector = build_projector(w0.shape[1], w0.shape[0], w2.shape[0])
        projector.load_state_dict({"0.weight": w0.float(), "2.weight": w2.float()})
        return projector.eval()
    from ..checkpoints import load_checkpoint

    model, _ = load_checkpoint(path, dtype=torch.float32, device="cpu")
    return model.projector.eval()


def materialize(module: Any) -> None:
    """Copy every weight into the process's own memory.

    transformers maps float32 safetensors files into memory instead of copying them, so the
    weights live in the page cache; when other processes need memory the kernel drops those pages
    and every forward reads the weights from disk again. Timing needs weights that stay put.
    """
    import torch

    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()


class Loader:
    """Loads each model once per (kind, dtype, quantization, compile) and hands out scorers."""

    def __init__(self, path: Path, *, peer_cache: Path | None = None, threads: int | None = None,
                 log: Callable[[str], None] = lambda message: None):
        self.path = path
        self.models: dict[tuple[Any, ...], Any] = {}
        self.loaded_bytes: dict[tuple[Any, ...], int] = {}
        self.peer_cache = peer_cache
        self.threads = threads
        self.log = log
        #: Why a peer could not be opened, so a run reports it once per workload without retrying the export.
        self.unavailable: dict[tuple[Any, ...], str] = {}

    @staticmethod
    def key(spec: PathSpec) -> tuple[Any, ...]:
        if spec.kind == "reference":
            return ("reference", spec.dtype)
        if spec.kind == "peer":
            return ("peer", spec.peer, spec.variant)
        return ("lbnl", spec.dtype, spec.quantize, spec.int8_backend, spec.compile)

    def _load(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        from ..hardware import release_memory

        if key not in self.models:
            release_memory()  # freed heap pages of an earlier load (an export, a conversion) would hide this one's
            before = rss()
            self.models[key] = build()
            release_memory()
            self.loaded_bytes[key] = max(0, rss() - before)
        return self.models[key]

    def scorer(self, spec: PathSpec) -> Any:
        import torch

        dtype = torch.float32 if spec.dtype == "float32" else torch.bfloat16
        if spec.kind == "reference":
            def build_reference() -> ReferenceScorer:
                scorer = ReferenceScorer(self.path, dtype)
                materialize(scorer.model)
                return scorer

            return self._load(self.key(spec), build_reference)
        if spec.kind == "peer":
            return self._peer(spec)
        from ..reranker import Reranker

        model, tokenizer = self._load(self.key(spec), lambda: self._build_lbnl(spec, dtype))
        reranker = Reranker(model, tokenizer, block_size=spec.block_size, fast_forward=spec.fast_forward,
                            name=self.path.name, pointwise=spec.pointwise)
        return LbnlScorer(reranker, spec.attention)

    def _build_lbnl(self, spec: PathSpec, dtype: Any) -> tuple[Any, Any]:
        from ..checkpoints import load_checkpoint
        from ..hardware import quantize_model

        model, tokenizer = load_checkpoint(self.path, dtype=dtype, device="cpu")
        materialize(model)
        quantize_model(model, spec.quantize, tokenizer, spec.int8_backend)
        if spec.compile:
            model.compile_kernels()
        return model, tokenizer

    def _peer(self, spec: PathSpec) -> PeerScorer:
        """A peer's scorer: its export (cached on disk) opened once; raises :class:`PeerUnavailable` with the reason."""
        import torch

        from ..checkpoints import load_tokenizer
        from ..checkpoints.bases import cache_root
        from ..model import special_token_ids
        from ..reranker import Reranker
        from .peers import PeerModel, PeerUnavailable, open_backend

        if self.key(spec) in self.unavailable:
            raise PeerUnavailable(self.unavailable[self.key(spec)])

        def build() -> tuple[Any, Any, Any]:
            cache = self.peer_cache or cache_root() / "bench" / "peers"
            backend = open_backend(spec.peer or "", spec.variant or "", self.path, cache,
                                   self.threads or torch.get_num_threads(), self.log)
            tokenizer = load_tokenizer(self.path)
            return backend, tokenizer, load_projector(self.path)

        try:
            backend, tokenizer, projector = self._load(self.key(spec), build)
        except PeerUnavailable as exc:
            self.unavailable[self.key(spec)] = str(exc)
            raise
        key = ("peer-model", spec.peer, spec.variant)
        if key not in self.models:
            self.models[key] = PeerModel(backend, projector, *special_token_ids(tokenizer))
        reranker = Reranker(self.models[key], tokenizer, block_size=spec.block_size, fast_forward=False,
                            name=self.path.name)
        return PeerScorer(reranker, backend)

    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (loaded once)."""
        from ..checkpoints import load_tokenizer

        if ("tokenizer",) not in self.models:
            self.models[("tokenizer",)] = load_tokenizer(self.path)
        return self.models[("tokenizer",)]

    def reference_hidden(self, prompts: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Any]:
        """The float32 reference's final hidden states at the read positions of each ``(ids, read)`` prompt: the
        plain transformers forward of the float32 backbone (SDPA).

        The model ``default`` runs is used when it is loaded; otherwise one is loaded for the call and freed
        after it (peers need the memory). Results are kept under the peers' cache, keyed by the checkpoint's
        fingerprint and the prompt, so runs that measure one peer family at a time compute each only once.
        """
        import gc
        import hashlib

        import torch

        from .peers.export import fingerprint

        cache = (self.peer_cache / fingerprint(self.path) / "reference-hidden") if self.peer_cache else None
        files = [cache / (hashlib.sha256(repr((list(map(int, ids)), list(map(int, read)))).encode()).hexdigest()[:24]
                          + ".pt") if cache else None for ids, read in prompts]
        out: list[Any] = [torch.load(f) if f is not None and f.exists() else None for f in files]
        todo = [i for i, h in enumerate(out) if h is None]
        if not todo:
            return out
        key = ("lbnl", "float32", None, False)
        model = self.models[key][0] if key in self.models else self._build_lbnl(
            PathSpec("reference-hidden", "lbnl"), torch.float32)[0]
        with torch.inference_mode():
            for i in todo:
                ids, read = prompts[i]
                out[i] = model.hidden_states(torch.tensor([list(ids)]))[0, list(read)].float().clone()
                if files[i] is not None:
                    files[i].parent.mkdir(parents=True, exist_ok=True)
                    torch.save(out[i], files[i])
        del model
        gc.collect()
        return out

    def release(self, spec: PathSpec) -> None:
        """Forget the models only ``spec`` used (the reference models are large)."""
        if spec.kind == "reference":
            self.models.pop(self.key(spec), None)
            import gc

            gc.collect()
