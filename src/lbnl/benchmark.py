"""``lbnl bench``: the official inference path, lbnl's defaults and lbnl's fast settings, side by side.

One run loads one checkpoint, builds the same inputs for every path (real SciFact text cut to an
exact token length, or synthetic text when the data is absent) and times the paths interleaved
(repeat 1 of every path, then repeat 2, ...), so a change in machine load hits all of them alike;
each path's time is its fastest repeat (other processes can only slow a call down).
It reports documents/s, tokens/s, latency, peak RSS, achieved FLOP/s as a fraction of the
machine's measured matmul peak, the speed ratio against the reference path, and how far each
path's scores are from the reference's.

Paths (``--paths``, comma-separated):

- ``reference-fp32``, ``reference-bf16``: the official remote code's computation, re-implemented:
  ``AutoModelForCausalLM`` forward with ``output_hidden_states=True, use_cache=False`` over one
  left-padded prompt per block of 125 documents, the last hidden state read at the special
  tokens, the projector, the block-weighted merge.
- ``hf``: lbnl's reranker with ``fast_forward=False`` (the plain transformers forward), float32.
- ``default``, ``fast``, ``fastest``: lbnl's presets (:data:`lbnl.reranker.PRESETS`); ``default`` and
  ``fast`` in float32, ``fastest`` with the weights it picks on this machine (bf16 with AMX, else int8).
- ``default-bf16``, ``fast-bf16``: the same in bfloat16 (what ``default`` computes for the official
  bf16 checkpoint on a CPU with AMX or AVX512-BF16).
- ``pointwise``: one prompt per document, as separate queries in one batched call.
- custom: ``lbnl:opt:opt...`` with options ``block=N``, ``int8``, ``bf16``, ``hf``, ``pointwise``,
  ``compile`` (``torch.compile`` of the fast path's norms and SiLU product), ``attn=sdpa`` or
  ``attn=chunked`` (the fast path's attention kernel; default: what ``auto`` picks on this machine).

Every path runs in one process, so they share its C allocator: the bench tunes it first, as lbnl
does when a reranker is created (:mod:`lbnl.hardware`), and the reference paths profit from that too;
``LBNL_MALLOC_TUNING=0`` measures everything with the allocator untouched.

Model FLOPs of a prompt of T tokens (the work a plain decoder forward needs; no LM head):
``layers * (2 * P * T + 2 * H * d * T * (T + 1))``, where P is the matmul parameters of one layer
(``2*h*H*d + 2*h*K*d + 3*h*i``: q/o, k/v, the gated MLP), H query heads of size d, K key/value
heads, and the attention term counts QK^T and AV over the T(T+1)/2 causal pairs. Every path is
charged the model FLOPs of the prompts it builds, whatever it skips, so the fraction of peak is
comparable across paths (the reference additionally runs an LM head that is not counted).

This module stays light at import; torch and transformers load when the command runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InvalidInputError
from .hardware import release_memory

#: The issue's workloads: queries x documents x tokens per document.
DEFAULT_WORKLOADS = ("1x20x256", "1x100x128", "16x20x128")
QUICK_WORKLOADS = ("1x6x48", "1x20x16", "3x4x24")
DEFAULT_PATHS = ("reference-fp32", "reference-bf16", "hf", "default", "default-bf16", "fast-bf16", "fastest")
ALIASES = {
    "reference-fp32": "reference:fp32",
    "reference-bf16": "reference:bf16",
    "hf": "lbnl:hf",
    "default": "lbnl",
    "default-bf16": "lbnl:bf16",
    "fast": "lbnl:preset=fast",
    "fast-bf16": "lbnl:preset=fast:bf16",
    "fastest": "lbnl:preset=fastest",
    "pointwise": "lbnl:pointwise",
    "pointwise-hf": "lbnl:pointwise:hf",
}
SHAPES = ("tiny", "qwen3-0.6b")
#: A path whose estimated time for one call exceeds this is skipped (the estimate assumes half of peak).
DEFAULT_TIME_CAP = 1800.0
ASSUMED_EFFICIENCY = 0.5


# ----------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Workload:
    """``queries`` queries, each with ``documents`` documents of exactly ``tokens`` tokens."""

    queries: int
    documents: int
    tokens: int

    @property
    def name(self) -> str:
        return f"{self.queries}x{self.documents}x{self.tokens}"

    @classmethod
    def parse(cls, text: str) -> "Workload":
        parts = text.lower().split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3 or min(values) <= 0:
            raise InvalidInputError(f"workload {text!r} is not QUERIESxDOCUMENTSxTOKENS, e.g. 1x20x256")
        return cls(*values)


def find_scifact() -> Path | None:
    """The BEIR SciFact directory named by ``$LBNL_SCIFACT`` when it holds the corpus, else ``None``
    (the bench then uses synthetic text)."""
    env = os.environ.get("LBNL_SCIFACT")
    if env and (Path(env) / "corpus.jsonl.gz").exists() and (Path(env) / "queries.jsonl.gz").exists():
        return Path(env).resolve()
    return None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_inputs(workload: Workload, tokenizer: Any, data: Path | None, seed: int = 0
                 ) -> tuple[list[str], list[list[str]], str]:
    """Queries and documents for a workload: a BEIR set's queries and documents holding at least ``tokens`` tokens
    (cut to exactly that many by ``max_doc_length``), or seeded synthetic text when ``data`` is ``None``."""
    rng = random.Random(seed)
    if data is not None:
        queries = [q["text"] for q in _jsonl(data / "queries.jsonl.gz")]
        corpus = [f"{d.get('title', '')} {d.get('text', '')}".strip() for d in _jsonl(data / "corpus.jsonl.gz")]
        rng.shuffle(corpus)
        pool: list[str] = []
        need = workload.documents * min(workload.queries, 4)
        for start in range(0, len(corpus), 512):
            chunk = corpus[start:start + 512]
            counts = [len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]]
            pool += [t for t, n in zip(chunk, counts) if n >= workload.tokens]
            if len(pool) >= need:
                break
        if len(pool) >= workload.documents:
            picked = rng.sample(queries, workload.queries)
            return picked, [rng.sample(pool, workload.documents) for _ in picked], f"corpus text ({data})"
    words = ("protein cell study risk trial patients gene expression effect dose mouse model tumor "
             "immune response blood level increase reduce association cohort analysis therapy").split()
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    queries = [text(12) for _ in range(workload.queries)]
    return queries, [[text(workload.tokens * 2) for _ in range(workload.documents)] for _ in queries], "synthetic"


# ----------------------------------------------------------------------------------------- FLOPs

@dataclass(frozen=True)
class DecoderShape:
    """What the FLOP count needs from a decoder config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> "DecoderShape":
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size, heads,
                   getattr(config, "num_key_value_heads", None) or heads, head_dim, config.vocab_size)

    @property
    def layer_params(self) -> int:
        h, d = self.hidden, self.head_dim
        return 2 * h * self.heads * d + 2 * h * self.kv_heads * d + 3 * h * self.intermediate

    def flops(self, length: int) -> float:
        """Model FLOPs of one causal forward over ``length`` tokens (module docstring)."""
        t = length
        return self.layers * (2.0 * self.layer_params * t + 2.0 * self.heads * self.head_dim * t * (t + 1))


def prompt_lengths(tokenizer: Any, query: str, documents: Sequence[str], block_size: int, max_doc_length: int,
                   max_query_length: int = 512) -> list[int]:
    """Token lengths of the prompts the spec's block planning builds for one query."""
    from .prompt import build_prompt, plan_blocks, truncate, truncate_many

    query_text, q_len = truncate(query, tokenizer, max_query_length)
    texts, counts = truncate_many(list(documents), tokenizer, max_doc_length)
    limit = getattr(tokenizer, "model_max_length", 131072)
    limit = int(limit) if limit and limit < 10**9 else 131072
    groups = plan_blocks(counts, q_len, limit, max_doc_length, block_size)
    prompts = [build_prompt(query_text, [texts[i] for i in g]) for g in groups]
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]


# ----------------------------------------------------------------------------------------- machine

def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_peaks(cap_seconds: float = 20.0) -> dict[str, Any]:
    """Best matmul throughput of this machine in TFLOP/s: float32 and bfloat16 (2048^2, or 512^2 when bf16 is
    emulated, under a time cap) and int8 dynamically quantized linear layers (2048 x 1024 x 3072)."""
    import torch

    from .hardware import cpu_has_fast_bf16, resolve_attention

    def best(fn: Callable[[], Any], flops: float, reps: int = 5, cap: float = cap_seconds) -> float:
        fn()
        fastest, began = float("inf"), time.perf_counter()
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            fastest = min(fastest, time.perf_counter() - start)
            if time.perf_counter() - began > cap:
                break
        return flops / fastest / 1e12

    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"cpu": _cpu_name(), "threads": torch.get_num_threads(),
                           "fast_bf16": bool(cpu_has_fast_bf16()) or torch.cuda.is_available(),
                           "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "bf16_attention": resolve_attention("auto", torch.bfloat16, torch.device("cpu"))}
    with torch.inference_mode():
        n = 2048
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        out["fp32_tflops"] = round(best(lambda: a @ b, 2 * n**3), 4)
        m = n if out["fast_bf16"] else 512
        a16, b16 = a[:m, :m].bfloat16(), b[:m, :m].bfloat16()
        out["bf16_tflops"] = round(best(lambda: a16 @ b16, 2 * m**3, reps=3), 4)
        out["bf16_size"] = m
        out["int8_linear_tflops"] = _int8_peak(best, gen)
    out["best_tflops"] = max(out["fp32_tflops"], out["bf16_tflops"])
    out["best_dtype"] = "float32" if out["fp32_tflops"] >= out["bf16_tflops"] else "bfloat16"
    return out


def _int8_peak(best: Callable[..., float], gen: Any) -> float | None:
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(torch.nn.Linear(1024, 3072, bias=False)), {torch.nn.Linear}, dtype=torch.qint8)
        x = torch.randn(2048, 1024, generator=gen)
        return round(best(lambda: layer(x), 2 * 2048 * 1024 * 3072), 4)
    except Exception:  # noqa: BLE001 - a build without fbgemm simply has no int8 figure
        return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class RssPeak:
    """Samples this process's resident memory every few milliseconds while active."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RssPeak":
        self.before = self.peak = _rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss())


# ----------------------------------------------------------------------------------------- paths

@dataclass
class PathSpec:
    """One way of scoring, parsed from ``reference:fp32`` or ``lbnl:block=16:int8`` (or an alias)."""

    name: str
    kind: str
    dtype: str = "float32"
    block_size: int = 125
    quantize: str | None = None
    fast_forward: bool = True
    pointwise: bool = False
    compile: bool = False
    attention: str = "auto"

    @classmethod
    def parse(cls, text: str) -> "PathSpec":
        from .hardware import PRESETS, fastest_weights

        spec = ALIASES.get(text, text)
        kind, *options = spec.split(":")
        if kind not in ("reference", "lbnl"):
            raise InvalidInputError(f"unknown path {text!r}; use {', '.join(ALIASES)} or lbnl:OPTION:OPTION...")
        path = cls(name=text, kind=kind)
        for option in options:
            key, _, value = option.partition("=")
            if key in ("fp32", "float32"):
                path.dtype = "float32"
            elif key in ("bf16", "bfloat16"):
                path.dtype = "bfloat16"
            elif key == "int8" and kind == "lbnl":
                path.quantize = "int8"
            elif key == "hf" and kind == "lbnl":
                path.fast_forward = False
            elif key == "pointwise" and kind == "lbnl":
                path.pointwise, path.block_size = True, 1
            elif key == "compile" and kind == "lbnl":
                path.compile = True
            elif key == "attn" and kind == "lbnl" and value in ("sdpa", "chunked"):
                path.attention = value
            elif key == "block" and kind == "lbnl" and value.isdigit() and int(value) > 0:
                path.block_size = int(value)
            elif key == "preset" and kind == "lbnl" and value in PRESETS:
                path.block_size, path.quantize = PRESETS[value].block_size, PRESETS[value].quantize
                if path.quantize == "auto":
                    quantize, dtype = fastest_weights("cpu", None)
                    path.quantize, path.dtype = quantize, dtype or path.dtype
            else:
                raise InvalidInputError(f"path {text!r}: unknown option {option!r}")
        return path

    def describe(self) -> str:
        if self.kind == "reference":
            return f"official path (AutoModelForCausalLM, hidden states, 125/prompt), {self.dtype}"
        parts = ["pointwise" if self.pointwise else f"{self.block_size}/prompt", self.dtype]
        parts += ["int8"] if self.quantize else []
        parts += ["transformers forward"] if not self.fast_forward else []
        parts += ["torch.compile"] if self.compile else []
        parts += [f"{self.attention} attention"] if self.attention != "auto" else []
        return "lbnl, " + ", ".join(parts)


class ReferenceScorer:
    """The official remote code's inference, re-implemented: causal-LM forward with every hidden state."""

    def __init__(self, path: Path, dtype: Any):
        import torch
        from safetensors import safe_open
        from transformers import AutoModelForCausalLM

        from .checkpoints.files import load_tokenizer, quiet_transformers, safetensors_files

        self.torch = torch
        self.tokenizer = load_tokenizer(path)
        with quiet_transformers():
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).eval()
        weights = {}
        for file in safetensors_files(path):
            with safe_open(str(file), framework="pt") as f:
                weights.update({k: f.get_tensor(k) for k in f.keys() if k.startswith("projector.")})
        self.w0 = weights["projector.0.weight"].to(dtype)
        self.w2 = weights["projector.2.weight"].to(dtype)
        self.doc_id = self.tokenizer.convert_tokens_to_ids("<|embed_token|>")
        self.query_id = self.tokenizer.convert_tokens_to_ids("<|rerank_token|>")

    def _block(self, query: str, docs: list[str]) -> tuple[Any, Any, Any]:
        from .prompt import build_prompt

        torch = self.torch
        batch = self.tokenizer([build_prompt(query, docs)], padding=True, padding_side="left", return_tensors="pt")
        out = self.model(**batch, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1][0]
        ids = batch["input_ids"][0]
        project = lambda h: torch.relu(h @ self.w0.T) @ self.w2.T  # noqa: E731
        docs_e, query_e = project(hidden[ids == self.doc_id]), project(hidden[ids == self.query_id])
        scores = torch.nn.functional.cosine_similarity(docs_e, query_e.expand_as(docs_e), dim=-1)
        return scores, docs_e, query_e[0]

    def score(self, queries: list[str], documents: list[list[str]], max_doc_length: int) -> list[list[float]]:
        from .prompt import plan_blocks, truncate, truncate_many

        torch = self.torch
        results = []
        with torch.no_grad():
            for query, docs in zip(queries, documents):
                query_text, q_len = truncate(query, self.tokenizer, 512)
                texts, counts = truncate_many(docs, self.tokenizer, max_doc_length)
                groups = plan_blocks(counts, q_len, self.tokenizer.model_max_length, max_doc_length, 125)
                blocks = [self._block(query_text, [texts[i] for i in g]) for g in groups]
                weights = torch.stack([((1 + s) / 2).max() for s, _, _ in blocks]).float()
                merged = (torch.stack([q.float() for _, _, q in blocks]) * weights[:, None]).sum(0) / weights.sum()
                doc_embs = torch.cat([d.float() for _, d, _ in blocks])
                order = [i for g in groups for i in g]
                cos = torch.nn.functional.cosine_similarity(doc_embs, merged.expand_as(doc_embs), dim=-1).tolist()
                aligned = [0.0] * len(docs)
                for i, s in zip(order, cos):
                    aligned[i] = s
                results.append(aligned)
        return results


class LbnlScorer:
    """lbnl's :class:`~lbnl.reranker.Reranker` with a path's settings, all queries in one ``rerank_many`` call."""

    def __init__(self, reranker: Any, attention: str = "auto"):
        self.reranker = reranker
        self.tokenizer = reranker.tokenizer
        self.attention = attention

    def score(self, queries: list[str], documents: list[list[str]], max_doc_length: int) -> list[list[float]]:
        self.reranker.model.attention = self.attention
        results = self.reranker.rerank_many(queries, documents, max_doc_length=max_doc_length)
        aligned = []
        for docs, ranked in zip(documents, results):
            row = [0.0] * len(docs)
            for r in ranked:
                row[r.index] = r.relevance_score
            aligned.append(row)
        return aligned


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

    def __init__(self, path: Path):
        self.path = path
        self.models: dict[tuple[Any, ...], Any] = {}
        self.loaded_bytes: dict[tuple[Any, ...], int] = {}

    @staticmethod
    def key(spec: PathSpec) -> tuple[Any, ...]:
        if spec.kind == "reference":
            return ("reference", spec.dtype)
        return ("lbnl", spec.dtype, spec.quantize, spec.compile)

    def _load(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        import gc

        if key not in self.models:
            gc.collect()
            before = _rss()
            self.models[key] = build()
            gc.collect()
            self.loaded_bytes[key] = max(0, _rss() - before)
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
        from .checkpoints import load_checkpoint
        from .hardware import quantize_int8
        from .reranker import Reranker

        def build() -> Any:
            model, tokenizer = load_checkpoint(self.path, dtype=dtype, device="cpu")
            materialize(model)
            if spec.quantize == "int8":
                quantize_int8(model)
            if spec.compile:
                model.compile_kernels()
            return model, tokenizer

        model, tokenizer = self._load(self.key(spec), build)
        reranker = Reranker(model, tokenizer, block_size=spec.block_size, fast_forward=spec.fast_forward,
                            name=self.path.name, pointwise=spec.pointwise)
        return LbnlScorer(reranker, spec.attention)

    def release(self, spec: PathSpec) -> None:
        """Forget the models only ``spec`` used (the reference models are large)."""
        if spec.kind == "reference":
            self.models.pop(self.key(spec), None)
            import gc

            gc.collect()


# ----------------------------------------------------------------------------------------- running

@dataclass
class PathResult:
    """Measurements of one path on one workload."""

    path: str
    description: str
    status: str = "ok"
    reason: str = ""
    times: list[float] = field(default_factory=list)
    seconds: float = 0.0
    docs_per_s: float = 0.0
    doc_tokens_per_s: float = 0.0
    prompt_tokens: int = 0
    prompt_tokens_per_s: float = 0.0
    latency_per_query_s: float = 0.0
    prompts: int = 0
    model_flops: float = 0.0
    tflops: float = 0.0
    peak_fraction: float = 0.0
    peak_rss_mb: float = 0.0
    model_rss_mb: float = 0.0
    activation_rss_mb: float = 0.0
    process_peak_rss_mb: float = 0.0
    speedup: dict[str, float] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    top10_agreement: dict[str, float] = field(default_factory=dict)
    scores: list[list[float]] = field(default_factory=list, repr=False)


def _estimate_reference_bytes(shape: DecoderShape, length: int, dtype_bytes: int) -> int:
    """Activation memory of the official path on one prompt: full-vocabulary logits and every hidden state."""
    return length * shape.vocab * dtype_bytes + (shape.layers + 1) * length * shape.hidden * dtype_bytes


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_workload(loader: Loader, specs: list[PathSpec], workload: Workload, shape: DecoderShape,
                 peaks: dict[str, Any], *, repeats: int, data: Path | None, time_cap: float,
                 base_rss: int = 0, release_reference: bool = False) -> dict[str, Any]:
    """Time every path on one workload, interleaving repeats, and compare scores and speed.

    Peak RSS per path is what a process running only that path would hold: ``base_rss`` (the
    process before any model), the RSS growth when the path's model was loaded, and the peak growth
    during its calls; the process's own peak (all models loaded) is reported beside it.
    """
    tokenizer = None
    for spec in specs:
        if spec.kind == "lbnl":
            tokenizer = loader.scorer(spec).tokenizer
            break
    if tokenizer is None:
        from .checkpoints import load_tokenizer

        tokenizer = load_tokenizer(loader.path)
    queries, documents, source = build_inputs(workload, tokenizer, data)
    max_doc = workload.tokens
    results: dict[str, PathResult] = {}
    runnable: list[PathSpec] = []
    for spec in specs:
        res = PathResult(spec.name, spec.describe())
        results[spec.name] = res
        lengths = [n for q, docs in zip(queries, documents)
                   for n in prompt_lengths(tokenizer, q, docs, spec.block_size, max_doc)]
        res.prompts, res.prompt_tokens = len(lengths), sum(lengths)
        res.model_flops = sum(shape.flops(n) for n in lengths)
        peak = peaks["bf16_tflops"] if spec.dtype == "bfloat16" else peaks["fp32_tflops"]
        estimate = res.model_flops / (peak * 1e12 * ASSUMED_EFFICIENCY)
        if estimate > time_cap:
            res.status, res.reason = "skipped", (
                f"estimated {estimate / 3600:.1f} h per call at {ASSUMED_EFFICIENCY:.0%} of the measured "
                f"{spec.dtype} matmul peak ({peak:.4f} TFLOP/s); cap {time_cap:.0f} s")
            continue
        if spec.kind == "reference":
            need = _estimate_reference_bytes(shape, max(lengths), 4 if spec.dtype == "float32" else 2)
            available = _mem_available()
            if available is not None and need > 0.8 * available:
                res.status, res.reason = "skipped", (
                    f"the official path would hold {need / 2**30:.1f} GiB of logits and hidden states for a "
                    f"{max(lengths)}-token prompt; {available / 2**30:.1f} GiB available")
                continue
        runnable.append(spec)
    warm_q, warm_d = queries[:1], [documents[0][:2]]
    for spec in runnable:
        loader.scorer(spec).score(warm_q, warm_d, min(max_doc, 32))
    for r in range(repeats):
        for spec in runnable:
            res = results[spec.name]
            scorer = loader.scorer(spec)
            release_memory()  # every call starts from live memory only, whatever the path before it freed
            with RssPeak() as rss:
                start = time.perf_counter()
                scores = scorer.score(queries, documents, max_doc)
                elapsed = time.perf_counter() - start
            res.times.append(round(elapsed, 4))
            res.process_peak_rss_mb = max(res.process_peak_rss_mb, rss.peak / 2**20)
            res.activation_rss_mb = max(res.activation_rss_mb, (rss.peak - rss.before) / 2**20)
            res.model_rss_mb = loader.loaded_bytes.get(loader.key(spec), 0) / 2**20
            res.peak_rss_mb = base_rss / 2**20 + res.model_rss_mb + res.activation_rss_mb
            res.scores = scores
            _log(f"{workload.name} {spec.name} repeat {r + 1}/{repeats}: {elapsed:.2f} s")
    if release_reference:
        for spec in runnable:
            loader.release(spec)
    n_docs = workload.queries * workload.documents
    for res in results.values():
        if res.status != "ok":
            continue
        res.seconds = min(res.times)
        res.docs_per_s = n_docs / res.seconds
        res.doc_tokens_per_s = n_docs * workload.tokens / res.seconds
        res.prompt_tokens_per_s = res.prompt_tokens / res.seconds
        res.latency_per_query_s = res.seconds / workload.queries
        res.tflops = res.model_flops / res.seconds / 1e12
        res.peak_fraction = res.tflops / peaks["best_tflops"]
    for base in ("reference-fp32", "reference-bf16"):
        ref = results.get(base)
        if ref is None or ref.status != "ok":
            continue
        for res in results.values():
            if res.status == "ok" and res is not ref:
                res.speedup[base] = ref.seconds / res.seconds
                res.max_abs_diff[base] = max(abs(a - b) for x, y in zip(res.scores, ref.scores) for a, b in zip(x, y))
                res.top10_agreement[base] = _top_agreement(res.scores, ref.scores, 10)
    return {"workload": workload.name, "queries": workload.queries, "documents": workload.documents,
            "tokens": workload.tokens, "source": source, "results": [asdict(r) for r in results.values()]}


def _top_agreement(a: list[list[float]], b: list[list[float]], k: int) -> float:
    """Mean share of the top-k documents two scorings agree on."""
    shares = []
    for x, y in zip(a, b):
        n = min(k, len(x))
        top = lambda s: set(sorted(range(len(s)), key=lambda i: -s[i])[:n])  # noqa: E731
        shares.append(len(top(x) & top(y)) / n)
    return sum(shares) / len(shares)


def bench_checkpoint(shape: str, cache_dir: Path) -> Path:
    """A random checkpoint of a named shape (real Qwen3 tokenizer), built once under ``cache_dir``."""
    from .testing.checkpoints import QWEN3_0_6B, build_random_checkpoint

    if shape not in SHAPES:
        raise InvalidInputError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    path = cache_dir / f"random-{shape}"
    if (path / "model.safetensors").exists():
        return path
    _log(f"building a random {shape} checkpoint in {path}")
    overrides = dict(QWEN3_0_6B) if shape == "qwen3-0.6b" else {}
    tmp = cache_dir / f".random-{shape}.partial"
    build_random_checkpoint(tmp, **overrides)
    tmp.rename(path)
    return path


def run_bench(model: Path, specs: list[PathSpec], workloads: list[Workload], *, repeats: int = 3,
              data: Path | None = None, time_cap: float = DEFAULT_TIME_CAP, threads: int | None = None,
              on_workload: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure the machine's matmul peaks, then every path on every workload; return the JSON-ready report.

    ``on_workload`` receives the report so far after each workload (long runs save partial results).
    """
    import torch
    from transformers import AutoConfig

    from .hardware import tune_allocator

    if threads:
        torch.set_num_threads(threads)
    tuned = tune_allocator()
    torch.manual_seed(0)
    _log("measuring matmul peaks")
    peaks = measure_peaks()
    _log(f"peaks: fp32 {peaks['fp32_tflops']} TFLOP/s, bf16 {peaks['bf16_tflops']} TFLOP/s, "
         f"int8 linear {peaks['int8_linear_tflops']} TFLOP/s")
    config = AutoConfig.from_pretrained(model)
    shape = DecoderShape.from_config(config)
    loader = Loader(model)
    base_rss = _rss()
    report: dict[str, Any] = {
        "command": None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {**peaks, "allocator_tuned": tuned},
        "model": str(model),
        "shape": asdict(shape), "repeats": repeats, "paths": {s.name: s.describe() for s in specs},
        "flops_formula": "layers * (2 * layer_params * T + 2 * heads * head_dim * T * (T + 1)) per prompt of T tokens",
        "workloads": [],
    }
    for workload in workloads:
        _log(f"workload {workload.name}")
        report["workloads"].append(run_workload(loader, specs, workload, shape, peaks, repeats=repeats, data=data,
                                                time_cap=time_cap, base_rss=base_rss))
        report["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        if on_workload is not None:
            on_workload(report)
    report["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report


# ----------------------------------------------------------------------------------------- output

def format_report(report: dict[str, Any], markdown: bool = False) -> str:
    """One table per workload: speed, memory, FLOP/s and score drift of every path."""
    m = report["machine"]
    lines = [f"{m['cpu']}, {m['threads']} threads; matmul peaks: fp32 {m['fp32_tflops']} TFLOP/s, "
             f"bf16 {m['bf16_tflops']} TFLOP/s (fast bf16: {m['fast_bf16']}), int8 linear "
             f"{m['int8_linear_tflops']} TFLOP/s; bf16 attention kernel {m.get('bf16_attention', 'sdpa')}, "
             f"allocator tuned: {m.get('allocator_tuned', False)}. Model {report['model']} "
             f"({report['shape']['layers']} layers, hidden {report['shape']['hidden']})."]
    head = ["path", "docs/s", "tok/s", "latency s", "peak RSS MB", "TFLOP/s", "% peak", "x ref fp32",
            "x ref bf16", "max |d| fp32", "top10 agree"]
    for w in report["workloads"]:
        rows = []
        for r in w["results"]:
            if r["status"] != "ok":
                rows.append([r["path"], "skipped: " + r["reason"]] + [""] * (len(head) - 2))
                continue
            fmt = lambda v, p=2: "" if v is None else f"{v:.{p}f}"  # noqa: E731
            rows.append([
                r["path"], fmt(r["docs_per_s"]), f"{r['doc_tokens_per_s']:.0f}", fmt(r["latency_per_query_s"]),
                f"{r['peak_rss_mb']:.0f}", fmt(r["tflops"], 4), f"{100 * r['peak_fraction']:.1f}",
                fmt(r["speedup"].get("reference-fp32")), fmt(r["speedup"].get("reference-bf16")),
                "" if "reference-fp32" not in r["max_abs_diff"] else f"{r['max_abs_diff']['reference-fp32']:.1e}",
                fmt(r["top10_agreement"].get("reference-fp32")),
            ])
        title = f"{w['workload']} ({w['queries']} queries x {w['documents']} documents x {w['tokens']} tokens, {w['source']})"
        lines.append("")
        if markdown:
            lines += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        else:
            measured = [head] + [row for row in rows if not row[1].startswith("skipped")]
            widths = [max(len(row[i]) for row in measured) for i in range(len(head))]
            lines.append(title)
            for row in [head, *rows]:
                if row[1].startswith("skipped"):
                    lines.append(f"{row[0].rjust(widths[0])}  {row[1]}")
                else:
                    lines.append("  ".join(c.rjust(w_) for c, w_ in zip(row, widths)))
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from .checkpoints import resolve_checkpoint

    if args.repeats <= 0:
        raise InvalidInputError("--repeats must be positive")
    specs = [PathSpec.parse(p.strip()) for p in args.paths.split(",") if p.strip()]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidInputError("a path is listed twice")
    workloads = [Workload.parse(w.strip()) for w in args.workload.split(",") if w.strip()]
    if args.model is not None and args.shape is not None:
        raise InvalidInputError("give --model or --shape, not both")
    cache = Path(args.cache_dir or os.environ.get("LBNL_CACHE", Path.home() / ".cache" / "lbnl")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    model = resolve_checkpoint(args.model) if args.model else bench_checkpoint(args.shape or "tiny", cache)
    data = None if args.data == "none" else (Path(args.data) if args.data else find_scifact())
    if data is not None and not (data / "corpus.jsonl.gz").exists():
        raise InvalidInputError(f"no corpus.jsonl.gz in {data}")
    command = "lbnl bench " + " ".join(args.argv)

    def save(report: dict[str, Any]) -> None:
        report["command"] = command
        if not args.output:
            return
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        saved = json.loads(json.dumps(report))
        for w in saved["workloads"]:
            for r in w["results"]:
                if not args.keep_scores:
                    r.pop("scores", None)
        out.write_text(json.dumps(saved, indent=2) + "\n")

    report = run_bench(model, specs, workloads, repeats=args.repeats, data=data, time_cap=args.time_cap,
                       threads=args.threads, on_workload=save)
    save(report)
    print(format_report(report))
    if args.output:
        print(f"wrote {args.output}")
    if args.markdown:
        Path(args.markdown).write_text(format_report(report, markdown=True) + "\n")
        print(f"wrote {args.markdown}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench", help="time the official path, lbnl defaults and fast settings side by side",
        description="Measure the machine's matmul peaks, then score the same inputs with every path "
                    "(interleaved repeats) and print documents/s, tokens/s, latency, peak RSS, FLOP/s as a "
                    "fraction of peak, the ratio to the official path and the score drift.")
    p.add_argument("--model", default=None, help="checkpoint directory (default: a random checkpoint of --shape)")
    p.add_argument("--shape", default=None, choices=SHAPES,
                   help="random checkpoint shape built once under the cache (default tiny)")
    p.add_argument("--workload", default=None,
                   help=f"comma-separated QUERIESxDOCUMENTSxTOKENS (default {','.join(DEFAULT_WORKLOADS)})")
    p.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                   help="comma-separated paths: " + ", ".join(ALIASES) + ", or lbnl:block=N:int8:bf16:hf:compile:attn=sdpa|chunked")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per path and workload (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--time-cap", type=float, default=DEFAULT_TIME_CAP,
                   help="skip a path whose estimated call time exceeds this many seconds (default 1800)")
    p.add_argument("--data", default=None, help="SciFact directory for real text (default: $LBNL_SCIFACT; "
                   "'none' or unset: synthetic text)")
    p.add_argument("--quick", action="store_true", help=f"small workloads ({','.join(QUICK_WORKLOADS)}), 1 repeat")
    p.add_argument("--output", default=None, help="write the full report as JSON")
    p.add_argument("--keep-scores", action="store_true", help="keep every path's scores in the JSON")
    p.add_argument("--markdown", default=None, help="also write the tables as markdown")
    p.add_argument("--cache-dir", default=None, help="where random checkpoints go (default $LBNL_CACHE or ~/.cache/lbnl)")
    p.set_defaults(func=_run_with_defaults)


def _run_with_defaults(args: argparse.Namespace) -> int:
    args.argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
    if args.quick:
        args.workload = args.workload or ",".join(QUICK_WORKLOADS)
        args.repeats = 1
    args.workload = args.workload or ",".join(DEFAULT_WORKLOADS)
    return _run(args)
