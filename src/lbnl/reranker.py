"""Public API: ``Reranker.from_pretrained(...).rerank(query, documents, top_n=...)``.

Defaults reproduce the official jina-reranker-v3 ``rerank`` (spec section 4): truncation by
decode, blocks of 125 documents or the token capacity, one forward per block, the block-weighted
merge of query vectors, and a float32 cosine. ``rerank_many`` packs the blocks of several
queries into right-padded batches; padding never changes a score.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from .errors import InvalidInputError
from .fusion import fuse_with_candidate_bm25
from .model import LBNLModel, PrefixState, quantize_int8, resolve_checkpoint
from .prompt import DEFAULT_BLOCK_SIZE, PREFIX, build_prompt, plan_blocks, prompt_head, truncate, truncate_many
from .runtime import tune_allocator

Document = str | Mapping[str, Any]

#: Padded tokens per forward when blocks are batched; larger batches gain little on a CPU.
DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class Preset:
    """Named speed settings: documents per prompt and weight quantization."""

    block_size: int
    quantize: str | None = None
    description: str = ""


#: ``Reranker.from_pretrained(..., preset=name)``. Only ``default`` reproduces the official scores;
#: see docs/performance.md for what the others cost in speed and ranking quality.
PRESETS: dict[str, Preset] = {
    "default": Preset(DEFAULT_BLOCK_SIZE, None, "the spec: up to 125 documents per prompt, exact scores"),
    "fast": Preset(16, None, "16 documents per prompt: less attention, different scores"),
    "fastest": Preset(16, "auto", "16 documents per prompt and the fastest weights for the device: bf16 on GPUs "
                                  "and on CPUs with AMX or AVX512-BF16, int8 linear layers on other CPUs"),
}


def fastest_weights(device: str | torch.device | None, dtype: str | torch.dtype | None) -> tuple[str | None, Any]:
    """``(quantize, dtype)`` of the ``fastest`` preset: bf16 where it is native (GPUs, AMX / AVX512-BF16
    CPUs), int8 dynamic quantization of a float32 model on other CPUs; an explicit ``dtype`` is kept."""
    from .model import cpu_has_fast_bf16, resolve_device

    on_cpu = resolve_device(device).type == "cpu"
    if dtype is not None:
        return ("int8" if on_cpu and str(dtype).removeprefix("torch.") in ("float32", "fp32", "float") else None), dtype
    if not on_cpu or cpu_has_fast_bf16():
        return None, "bfloat16"
    return "int8", None

#: Shared prompt heads shorter than this are not worth a separate pass.
MIN_PREFIX_TOKENS = 16


@dataclass
class RerankResult:
    """One ranked document: its input ``index``, ``relevance_score`` (cosine in [-1, 1]), the caller's ``document``."""

    index: int
    relevance_score: float
    document: Any
    embedding: np.ndarray | None = field(default=None, repr=False)


@dataclass
class _Block:
    doc_indices: list[int]
    input_ids: list[int]
    end: int = 0
    head: int = 0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class _PrefixCache:
    """A small LRU of prompt-head key/value states, dropped whenever the model's weights or attention kernel change."""

    def __init__(self, size: int = 8):
        self.size = size
        self.states: OrderedDict[tuple[int, ...], PrefixState] = OrderedDict()
        self.stamp: tuple[Any, ...] | None = None
        self.lock = threading.Lock()

    @staticmethod
    def _stamp(model: LBNLModel) -> tuple[Any, ...]:
        params = list(model.parameters())
        return (id(model.backbone), params[0].data_ptr(), sum(p._version for p in params), model.attention_kernel)

    def get(self, model: LBNLModel, ids: Sequence[int], anchor: int) -> PrefixState:
        """The state of ``ids``, always computed as its first ``anchor`` tokens (the system prompt, shared by
        every query) and then the rest, so a score never depends on what happened to be cached."""
        key = tuple(ids)
        with self.lock:
            stamp = self._stamp(model)
            if stamp != self.stamp:
                self.states.clear()
                self.stamp = stamp
            if key in self.states:
                self.states.move_to_end(key)
                return self.states[key]
            base = None
            if 0 < anchor < len(key):
                base = self.states.get(key[:anchor]) or model.prefix_state(key[:anchor])
                self._put(base)
            state = model.prefix_state(key, base)
            self._put(state)
            return state

    def _put(self, state: PrefixState) -> None:
        self.states[state.ids] = state
        self.states.move_to_end(state.ids)
        while len(self.states) > self.size:
            self.states.popitem(last=False)


@dataclass
class _QueryPlan:
    query: str
    documents: list[Document]
    texts: list[str]
    query_tokens: int
    doc_tokens: list[int]
    blocks: list[_Block]


def document_text(doc: object, position: int) -> str:
    """Accept a string or a ``{"text": ...}`` object, as the rerank HTTP APIs do."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Mapping):
        text = doc.get("text")
        if isinstance(text, str):
            return text
        raise InvalidInputError(f"document {position} is an object without a string 'text' field")
    raise InvalidInputError(f"document {position} is a {type(doc).__name__}; documents must be strings or {{'text': ...}}")


def _check_positive(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


def _check_query(query: object) -> str:
    if not isinstance(query, str):
        raise InvalidInputError(f"the query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("the query is empty")
    return query


def _check_documents(documents: object) -> tuple[list[Document], list[str]]:
    if isinstance(documents, (str, bytes, Mapping)) or not isinstance(documents, Iterable):
        raise InvalidInputError("documents must be a list of strings or {'text': ...} objects")
    docs = list(documents)
    return docs, [document_text(doc, i) for i, doc in enumerate(docs)]


class Reranker:
    """Listwise reranking with an LBNL model.

    Args:
        model: the loaded :class:`~lbnl.model.LBNLModel`.
        tokenizer: its Hugging Face tokenizer (holding the embed and rerank tokens).
        block_size: documents per prompt; the spec's 125 by default. Smaller blocks run faster on
            a CPU (attention grows with the square of the prompt) but change the scores.
        max_batch_tokens: padded tokens per forward when several blocks are batched.
        fast_forward: run lbnl's own decoder loop where the backbone allows it (Llama, Qwen2, Qwen3):
            the shared prompt head is computed once and reused, the last layer runs only at the
            embedding positions, tokens after the rerank token are skipped. Same scores (to rounding)
            as ``False``, the plain transformers forward.
        pointwise: score every document alone, in a prompt of its own with its own query embedding
            (how a pointwise-trained model must be read); ``from_pretrained`` sets it from the
            checkpoint's recorded training mode.
        fuse_bm25: blend the model's scores with BM25 over the request's own documents,
            ``fuse_bm25 * minmax(model) + (1 - fuse_bm25) * minmax(bm25)`` per query (see
            :mod:`lbnl.fusion`); ``None`` (the spec) returns the model's cosines. ``from_pretrained``
            takes it from the checkpoint: lbnl-small ships with a weight, official weights with none.
    """

    def __init__(
        self,
        model: LBNLModel,
        tokenizer: Any,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        name: str | None = None,
        fast_forward: bool = True,
        pointwise: bool = False,
        fuse_bm25: float | None = None,
    ):
        if fuse_bm25 is not None and not 0 <= fuse_bm25 <= 1:
            raise InvalidInputError(f"fuse_bm25 must be in [0, 1] or None, got {fuse_bm25!r}")
        self.model = model
        if model.device.type == "cpu":
            tune_allocator()
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.pointwise = pointwise
        self.fuse_bm25 = fuse_bm25
        self.max_batch_tokens = max_batch_tokens
        self.fast_forward = fast_forward
        self._prefixes = _PrefixCache()
        self._anchor: list[int] | None = None
        self.name = name or getattr(model.config, "_name_or_path", None) or "lbnl"
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad) if pad is not None else 0

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike[str] | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        preset: str | None = None,
        quantize: str | None = None,
        **kwargs: Any,
    ) -> "Reranker":
        """Load a local checkpoint directory or a hub id; ``None`` loads lbnl's built-in default model.

        Args:
            model_name_or_path: a directory in the official layout, an lbnl adapter directory, or a
                hub id such as ``jinaai/jina-reranker-v3`` (downloaded when the network allows).
            dtype: a torch dtype or its name; default: the checkpoint's, float32 on a CPU without
                fast bf16.
            device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
            preset: ``"default"`` (the spec), ``"fast"`` or ``"fastest"`` (see :data:`PRESETS`); an
                explicit ``block_size`` or ``quantize`` overrides the preset's.
            quantize: ``"int8"`` to quantize the decoder's linear layers (CPU, float32); scores change.
            **kwargs: passed to the constructor (``block_size``, ``max_batch_tokens``, ``fast_forward``,
                ``pointwise``, ``fuse_bm25``; the last two default to what the checkpoint records).
        """
        from .models import checkpoint_mode, checkpoint_fusion, load_checkpoint

        if preset is not None and preset not in PRESETS:
            raise InvalidInputError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        settings = PRESETS[preset or "default"]
        quantize = quantize if quantize is not None else settings.quantize
        if quantize == "auto":
            quantize, dtype = fastest_weights(device, dtype)
        if quantize not in (None, "none", "int8"):
            raise InvalidInputError(f"unknown quantization {quantize!r}; use int8 or none")
        kwargs.setdefault("block_size", settings.block_size)
        if model_name_or_path is None:
            from .models.default import default_model_path

            model_name_or_path = default_model_path()
        path = resolve_checkpoint(model_name_or_path)
        model, tokenizer = load_checkpoint(path, dtype="float32" if quantize == "int8" and dtype is None else dtype,
                                           device=device)
        if quantize == "int8":
            quantize_int8(model)
        kwargs.setdefault("name", str(model_name_or_path))
        kwargs.setdefault("pointwise", checkpoint_mode(path) == "pointwise")
        kwargs.setdefault("fuse_bm25", checkpoint_fusion(path))
        return cls(model, tokenizer, **kwargs)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write the official checkpoint layout; loading it back gives identical scores."""
        self.model.save_pretrained(path, self.tokenizer)

    @property
    def model_max_length(self) -> int:
        length = getattr(self.tokenizer, "model_max_length", None)
        return int(length) if length and length < 10**9 else 131072

    def rerank(
        self,
        query: str,
        documents: Sequence[Document],
        top_n: int | None = None,
        return_embeddings: bool = False,
        max_query_length: int = 512,
        max_doc_length: int = 2048,
        instruction: str | None = None,
    ) -> list[RerankResult]:
        """Rank ``documents`` for ``query``, best first.

        Args:
            query: the search query (non-empty).
            documents: strings or ``{"text": ...}`` objects; results carry them back unchanged.
            top_n: keep only the best ``top_n`` results; ``None`` keeps all.
            return_embeddings: attach each document's projected embedding (float32, 512-d).
            max_query_length: tokens kept of the query.
            max_doc_length: tokens kept of each document.
            instruction: optional task instruction placed in the prompt.
        """
        return self.rerank_many(
            [query], [documents], top_n=top_n, return_embeddings=return_embeddings,
            max_query_length=max_query_length, max_doc_length=max_doc_length, instruction=instruction,
        )[0]

    def rerank_many(
        self,
        queries: Sequence[str],
        documents_per_query: Sequence[Sequence[Document]],
        top_n: int | None = None,
        return_embeddings: bool = False,
        max_query_length: int = 512,
        max_doc_length: int = 2048,
        instruction: str | None = None,
        progress: bool = False,
    ) -> list[list[RerankResult]]:
        """Rerank several queries at once; each gets exactly the scores a lone ``rerank`` call gives.

        Blocks of all queries are sorted by length and packed into right-padded batches of at most
        ``max_batch_tokens`` padded tokens. ``progress`` shows a tqdm bar over the batches.
        """
        _check_positive("top_n", top_n, allow_none=True)
        _check_positive("max_query_length", max_query_length)
        _check_positive("max_doc_length", max_doc_length)
        if isinstance(queries, str) or len(queries) != len(documents_per_query):
            raise InvalidInputError("rerank_many needs a list of queries and one document list per query")
        if instruction is not None and not isinstance(instruction, str):
            raise InvalidInputError("the instruction must be a string")
        plans = [
            self._plan(_check_query(q), docs, max_query_length, max_doc_length, instruction)
            for q, docs in zip(queries, documents_per_query)
        ]
        outputs = self._run([b for plan in plans for b in plan.blocks], progress)
        results = []
        for plan in plans:
            blocks = [(b, outputs[id(b)]) for b in plan.blocks]
            results.append(self._merge(plan, blocks, top_n, return_embeddings))
        return results

    def count_tokens(self, query: str, documents: Sequence[Document], max_query_length: int = 512,
                     max_doc_length: int = 2048) -> tuple[int, int]:
        """Tokens of the query and of all documents after truncation (for usage reporting)."""
        plan = self._plan(_check_query(query), documents, max_query_length, max_doc_length, None, build=False)
        return plan.query_tokens, sum(plan.doc_tokens)

    def _plan(self, query: str, documents: Sequence[Document], max_query_length: int, max_doc_length: int,
              instruction: str | None, build: bool = True) -> _QueryPlan:
        docs, texts = _check_documents(documents)
        query_text, query_tokens = truncate(query, self.tokenizer, max_query_length)
        doc_texts, doc_tokens = truncate_many(texts, self.tokenizer, max_doc_length)
        blocks: list[_Block] = []
        if build and texts:
            groups = plan_blocks(doc_tokens, query_tokens, self.model_max_length, max_doc_length,
                                 1 if self.pointwise else self.block_size)
            prompts = [build_prompt(query_text, [doc_texts[i] for i in group], instruction) for group in groups]
            sizes = sorted({len(g) for g in groups})
            heads = [prompt_head(query_text, k, instruction) for k in sizes]
            encoded = self.tokenizer(prompts + heads, add_special_tokens=True)["input_ids"]
            head_ids = dict(zip(sizes, encoded[len(prompts):]))
            rerank_id = self.model.rerank_token_id
            for group, ids in zip(groups, encoded[: len(prompts)]):
                end = len(ids) - ids[::-1].index(rerank_id) if rerank_id in ids else len(ids)
                head = min(_common_prefix(ids, head_ids[len(group)]), end - 1)
                blocks.append(_Block(group, ids, end, head))
        return _QueryPlan(query, docs, texts, query_tokens, doc_tokens, blocks)

    def _anchor_length(self, ids: Sequence[int]) -> int:
        """Tokens of the system prompt at the start of ``ids`` (the part every prompt shares)."""
        if self._anchor is None:
            self._anchor = list(self.tokenizer(PREFIX, add_special_tokens=True)["input_ids"])
        return _common_prefix(ids, self._anchor)

    def _batches(self, blocks: list[_Block]) -> list[list[_Block]]:
        ordered = sorted(blocks, key=lambda b: len(b.input_ids), reverse=True)
        batches: list[list[_Block]] = []
        for block in ordered:
            if batches and len(batches[-1][0].input_ids) * (len(batches[-1]) + 1) <= self.max_batch_tokens:
                batches[-1].append(block)
            else:
                batches.append([block])
        return batches

    @torch.inference_mode()
    def _run(self, blocks: list[_Block], progress: bool) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        from tqdm.auto import tqdm

        outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        batches = self._batches(blocks)
        device = self.model.device
        fast = self.fast_forward and self.model.fast_path
        for batch in tqdm(batches, desc="rerank", unit="batch", disable=not progress or len(batches) < 2):
            if fast:
                docs, query = self._encode_fast(batch)
            else:
                width = len(batch[0].input_ids)
                ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
                for row, block in enumerate(batch):
                    ids[row, : len(block.input_ids)] = torch.tensor(block.input_ids)
                docs, query = self.model(ids.to(device))
            for row, block in enumerate(batch):
                if docs[row].shape[0] != len(block.doc_indices):
                    raise RuntimeError("embed token count does not match the documents of a block")
                outputs[id(block)] = (docs[row], query[row])
        return outputs

    def _encode_fast(self, batch: list[_Block]) -> tuple[list[torch.Tensor], torch.Tensor]:
        rows = [b.input_ids[: b.end] for b in batch]
        shared = min(b.head for b in batch)
        for row in rows[1:]:
            shared = min(shared, _common_prefix(rows[0], row))
        if shared < MIN_PREFIX_TOKENS:
            return self.model.encode(rows, pad_token_id=self.pad_token_id)
        prefix = self._prefixes.get(self.model, rows[0][:shared], self._anchor_length(rows[0]))
        return self.model.encode([r[shared:] for r in rows], prefix=prefix, pad_token_id=self.pad_token_id)

    def _merge(self, plan: _QueryPlan, blocks: list[tuple[_Block, tuple[torch.Tensor, torch.Tensor]]],
               top_n: int | None, return_embeddings: bool) -> list[RerankResult]:
        if not blocks:
            return []
        n = len(plan.texts)
        doc_emb = torch.empty((n, blocks[0][1][0].shape[-1]), dtype=torch.float32)
        own_query = torch.empty_like(doc_emb)
        query_vecs, weights = [], []
        for block, (docs, query) in blocks:
            in_model = torch.nn.functional.cosine_similarity(docs, query.unsqueeze(0).expand_as(docs), dim=-1)
            weights.append(((1 + in_model) / 2).max().float())
            query_vecs.append(query.float())
            doc_emb[block.doc_indices] = docs.float().cpu()
            own_query[block.doc_indices] = query.float().cpu()
        if self.pointwise:
            against = own_query
        else:
            w = torch.stack(weights).cpu()
            against = ((torch.stack(query_vecs).cpu() * w[:, None]).sum(0) / w.sum()).unsqueeze(0).expand_as(doc_emb)
        scores = torch.nn.functional.cosine_similarity(doc_emb, against, dim=-1).tolist()
        if self.fuse_bm25 is not None:
            scores = fuse_with_candidate_bm25(plan.query, plan.texts, scores, self.fuse_bm25)
        order = sorted(range(n), key=lambda i: -scores[i])
        if top_n is not None:
            order = order[:top_n]
        return [
            RerankResult(
                index=i,
                relevance_score=float(scores[i]),
                document=plan.documents[i],
                embedding=doc_emb[i].numpy().copy() if return_embeddings else None,
            )
            for i in order
        ]
