"""The LBNL reranker: ``Reranker.from_pretrained(...)`` and how it scores.

Its defaults reproduce the official jina-reranker-v3 ``rerank`` (docs/spec.md): truncation by
decode, blocks of 125 documents or the token capacity, one forward per block, the block-weighted
merge of query vectors, and a float32 cosine. Prompts of many queries are packed into batches, which
moves scores by the dtype's rounding (bf16: enough to swap near-ties); ``max_batch_tokens=1`` runs every
prompt alone, and scores are then bit-identical to a lone call's (docs/architecture.md). Every
method users call (``score``, ``rerank``, ``rank``, ``predict``...) comes from
:class:`lbnl.base.BaseReranker`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .base import BaseReranker, Document, RerankResult, ScoredList, check_documents, check_positive, check_query
from .defaults import DEFAULT_BLOCK_SIZE, MAX_BATCH_TOKENS, MAX_DOC_LENGTH, MAX_QUERY_LENGTH, MODEL_MAX_LENGTH
from .engine import Block, common_prefix, run_blocks
from .errors import InvalidInputError
from .model import LBNLModel
from .prompt import PREFIX, build_prompt, plan_blocks, prompt_head, truncate, truncate_many

__all__ = ["BaseReranker", "Document", "RerankResult", "Reranker", "ScoredList"]


@dataclass
class _QueryPlan:
    texts: list[str]
    query_tokens: int
    doc_tokens: list[int]
    blocks: list[Block]


class Reranker(BaseReranker):
    """Listwise reranking with an LBNL model.

    Args:
        model: the loaded :class:`~lbnl.model.LBNLModel`.
        tokenizer: its Hugging Face tokenizer (holding the embed and rerank tokens).
        block_size: documents per prompt; the spec's 125 by default. Smaller blocks run faster on
            a CPU (attention grows with the square of the prompt) but change the scores.
        max_batch_tokens: padded tokens per forward when several blocks are batched; 1 runs every block
            alone (scores bit-identical to a lone call's, whatever else is scored).
        name: the model's name (shown by the server and the CLI; never a filesystem path).
        fast_forward: run lbnl's own decoder loop where the backbone allows it (Llama, Qwen2, Qwen3):
            the shared prompt head is computed once per call, the last layer runs only at the
            embedding positions, tokens after the rerank token are skipped. Same scores (to rounding)
            as ``False``, the plain transformers forward.
        pointwise: score every document alone, in a prompt of its own with its own query embedding
            (how a pointwise-trained model must be read); ``from_pretrained`` sets it from the
            checkpoint's recorded training mode.
        source: the checkpoint directory the model was loaded from (``from_pretrained`` sets it).
        symmetric: also read every list in reverse order and give each document the mean of its two
            scores (permutation self-consistency): a ranking of two documents no longer depends on
            which was sent first, at twice the cost. Off by default (the spec reads each list once).
    """

    def __init__(
        self,
        model: LBNLModel,
        tokenizer: Any,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        name: str | None = None,
        fast_forward: bool = True,
        pointwise: bool = False,
        source: str | os.PathLike[str] | None = None,
        symmetric: bool = False,
    ):
        check_positive("block_size", block_size)
        check_positive("max_batch_tokens", max_batch_tokens)
        self.model = model
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.pointwise = pointwise
        self.max_batch_tokens = max_batch_tokens
        self.fast_forward = fast_forward
        self._anchor: list[int] | None = None
        self.name = name or "lbnl"
        self.source = source
        self.symmetric = bool(symmetric)
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
        fusion: Any = "checkpoint",
        **kwargs: Any,
    ) -> BaseReranker:
        """Load a local checkpoint directory, a built-in model's name or a hub id; ``None`` loads the
        built-in default model.

        Args:
            model_name_or_path: a directory in the official layout, an lbnl adapter directory, the name
                of a built-in model (``lbnl-small``), or a hub id such as ``jinaai/jina-reranker-v3``
                (downloaded when the network allows).
            dtype: a torch dtype or its name; default: the checkpoint's, float32 on a CPU without
                fast bf16.
            device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
            preset: ``"default"`` (the spec), ``"fast"`` or ``"fastest"`` (see
                :data:`lbnl.hardware.PRESETS`); an explicit ``block_size`` or ``quantize`` overrides it.
            quantize: ``"int8"``: the decoder's matmuls in int8 (int8 weights and per-token int8 activations,
                a few calibrated outlier channels per matmul kept in the float dtype, and attention's
                query-key products where :func:`lbnl.hardware.resolve_attention` says, :mod:`lbnl.int8`; CPU,
                fast with VNNI); ``"int8-plain"``: the same without outlier channels; ``"int8-dynamic"``:
                torch.ao dynamic quantization of a float32 model's linear layers; ``"none"``. Scores change
                (docs/results.md).
            fusion: ``"checkpoint"`` (default): lexical fusion if the checkpoint asks for it, returning
                a :class:`lbnl.fusion.FusedReranker`; ``None``: the model's own scores; a weight or a
                :class:`lbnl.checkpoints.Fusion`: that fusion.
            **kwargs: passed to the constructor (``block_size``, ``max_batch_tokens``, ``fast_forward``,
                ``pointwise`` (default: the checkpoint's recorded mode), ``symmetric``, ``name``).
        """
        from .checkpoints import Fusion, load_checkpoint, locate, read_info
        from .hardware import preset as get_preset
        from .hardware import quantize_model, weight_plan

        settings = get_preset(preset)
        quantize, dtype = weight_plan(quantize if quantize is not None else settings.quantize, device, dtype)
        path, name = locate(model_name_or_path)
        info = read_info(path)
        kwargs.setdefault("block_size", info.block_size if preset is None and info.block_size else settings.block_size)
        model, tokenizer = load_checkpoint(info, dtype=dtype, device=device)
        quantize_model(model, quantize, tokenizer)
        kwargs.setdefault("name", name)
        kwargs.setdefault("source", path)
        kwargs.setdefault("pointwise", info.mode == "pointwise")
        reranker = cls(model, tokenizer, **kwargs)
        if isinstance(fusion, str) and fusion == "checkpoint":
            fusion = info.fusion
        elif fusion is not None and not isinstance(fusion, Fusion):
            fusion = Fusion(fusion, info.fusion.transform if info.fusion else "minmax")
        if fusion is None:
            return reranker
        from .fusion import FusedReranker

        return FusedReranker(reranker, fusion)

    def settings(self) -> dict[str, Any]:
        """How this reranker reads its model, as a checkpoint records it (see :mod:`lbnl.checkpoints.info`)."""
        out: dict[str, Any] = {"mode": "pointwise"} if self.pointwise else {}
        if self.block_size != DEFAULT_BLOCK_SIZE and not self.pointwise:
            out["block_size"] = self.block_size
        return out

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write the official checkpoint layout with this reranker's reading settings; loading it back
        gives identical scores."""
        from .checkpoints import save_official

        save_official(self.model, path, self.tokenizer, self.settings())

    @property
    def model_max_length(self) -> int:
        length = getattr(self.tokenizer, "model_max_length", None)
        return int(length) if length and length < 10**9 else MODEL_MAX_LENGTH

    def score_lists(
        self,
        queries: Sequence[str],
        documents_per_query: Sequence[Sequence[Document]],
        *,
        return_embeddings: bool = False,
        max_query_length: int = MAX_QUERY_LENGTH,
        max_doc_length: int = MAX_DOC_LENGTH,
        instruction: str | None = None,
        progress: bool = False,
    ) -> list[ScoredList]:
        """Cosine scores of each query's documents in input order (embeddings: projected, float32).

        Blocks of all queries are sorted by length and packed into right-padded batches of at most
        ``max_batch_tokens`` padded tokens; each query gets the scores a lone call gives, to the dtype's
        rounding (bit for bit with ``max_batch_tokens=1``, where every block runs alone). With
        ``symmetric``, each list is also read reversed and the two scores of a document averaged
        (embeddings: the forward reading's).

        Args:
            queries: the queries (non-empty strings).
            documents_per_query: one document list per query.
            return_embeddings: also return each document's projected embedding.
            max_query_length: tokens kept of the query.
            max_doc_length: tokens kept of each document.
            instruction: optional task instruction placed in the prompt.
            progress: show a tqdm bar over the batches.
        """
        check_positive("max_query_length", max_query_length)
        check_positive("max_doc_length", max_doc_length)
        if isinstance(queries, str) or len(queries) != len(documents_per_query):
            raise InvalidInputError("give a list of queries and one document list per query")
        if instruction is not None and not isinstance(instruction, str):
            raise InvalidInputError("the instruction must be a string")
        plans = [self._plan(check_query(q), docs, max_query_length, max_doc_length, instruction)
                 for q, docs in zip(queries, documents_per_query)]
        reverse = self.symmetric and not self.pointwise
        backward = [self._plan(check_query(q), list(docs)[::-1], max_query_length, max_doc_length, instruction)
                    for q, docs in zip(queries, documents_per_query)] if reverse else []
        outputs = run_blocks(self.model, [b for plan in plans + backward for b in plan.blocks],
                             max_batch_tokens=self.max_batch_tokens, pad_token_id=self.pad_token_id,
                             anchor=self._anchor_ids(), fast=self.fast_forward, progress=progress)
        merged = [self._merge(plan, [(b, outputs[id(b)]) for b in plan.blocks], return_embeddings) for plan in plans]
        for out, plan in zip(merged, backward):
            back = self._merge(plan, [(b, outputs[id(b)]) for b in plan.blocks], False).scores[::-1]
            out.scores = [(a + b) / 2 for a, b in zip(out.scores, back)]
        return merged

    def count_tokens(self, query: str, documents: Sequence[Document], max_query_length: int = MAX_QUERY_LENGTH,
                     max_doc_length: int = MAX_DOC_LENGTH) -> tuple[int, int]:
        """Tokens of the query and of all documents after truncation (for usage reporting)."""
        plan = self._plan(check_query(query), documents, max_query_length, max_doc_length, None, build=False)
        return plan.query_tokens, sum(plan.doc_tokens)

    def _plan(self, query: str, documents: Sequence[Document], max_query_length: int, max_doc_length: int,
              instruction: str | None, build: bool = True) -> _QueryPlan:
        _, texts = check_documents(documents)
        query_text, query_tokens = truncate(query, self.tokenizer, max_query_length)
        doc_texts, doc_tokens = truncate_many(texts, self.tokenizer, max_doc_length)
        blocks: list[Block] = []
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
                head = min(common_prefix(ids, head_ids[len(group)]), end - 1)
                blocks.append(Block(group, ids, end, head))
        return _QueryPlan(texts, query_tokens, doc_tokens, blocks)

    def _anchor_ids(self) -> list[int]:
        """Token ids of the system prompt that every prompt starts with."""
        if self._anchor is None:
            self._anchor = list(self.tokenizer(PREFIX, add_special_tokens=True)["input_ids"])
        return self._anchor

    def _merge(self, plan: _QueryPlan, blocks: list[tuple[Block, tuple[torch.Tensor, torch.Tensor]]],
               return_embeddings: bool) -> ScoredList:
        """The spec's block-weighted merge of query vectors, then the float32 cosine of every document."""
        if not blocks:
            return ScoredList([], np.zeros((0, 0), dtype=np.float32) if return_embeddings else None)
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
        return ScoredList(scores, doc_emb.numpy() if return_embeddings else None)
