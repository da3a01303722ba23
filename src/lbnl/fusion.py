"""Lexical fusion: a reranker whose scores are blended with BM25 over each request's own documents.

A model too small to rank alone (an early built-in lbnl-small) ships with a fusion setting in its
checkpoint, and ``Reranker.from_pretrained`` then returns a :class:`FusedReranker` around the
model: BM25 over the candidates is the only lexical evidence a rerank call has, since it never sees
a corpus. Two transforms exist:

- ``minmax``: ``w * minmax(model) + (1 - w) * minmax(bm25)`` over each request. Scores only compare
  within one request (a lone document always scores 0).
- ``fixed``: ``w * (1 + cos) / 2 + (1 - w) * bm25 / (bm25 + scale)``: every score in [0, 1] means the
  same in every request, so thresholds and merged results stay meaningful.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .checkpoints.info import Fusion
from .ir.bm25 import candidate_bm25
from .ir.fusion import minmax
from .base import BaseReranker, Document, ScoredList, document_text

#: BM25 value that the ``fixed`` transform maps to 0.5.
FIXED_BM25_SCALE = 10.0


def fuse_scores(fusion: Fusion, query: str, texts: Sequence[str], scores: Sequence[float]) -> list[float]:
    """Blend one request's model scores with BM25 over its documents, as ``fusion`` says."""
    if not scores:
        return []
    lexical = candidate_bm25(query, texts)
    w = fusion.weight
    if fusion.transform == "minmax":
        return [w * m + (1 - w) * b for m, b in zip(minmax(scores), minmax(lexical))]
    return [w * (1 + m) / 2 + (1 - w) * b / (b + FIXED_BM25_SCALE) for m, b in zip(scores, lexical)]


class FusedReranker(BaseReranker):
    """A reranker whose scores are fused with candidate BM25 (see the module docstring).

    Attributes of the wrapped reranker (``model``, ``tokenizer``, ``block_size``, ``count_tokens``...)
    are reachable on the wrapper; ``reranker`` is the model alone.
    """

    def __init__(self, reranker: BaseReranker, fusion: Fusion | float):
        self.reranker = reranker
        self.fusion = fusion if isinstance(fusion, Fusion) else Fusion(fusion)
        self.name = reranker.name

    def __getattr__(self, name: str) -> Any:
        if name == "reranker":
            raise AttributeError(name)
        return getattr(self.reranker, name)

    def score_lists(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[Document]], *,
                    return_embeddings: bool = False, **options: Any) -> list[ScoredList]:
        scored = self.reranker.score_lists(queries, documents_per_query, return_embeddings=return_embeddings,
                                           **options)
        out = []
        for query, docs, lst in zip(queries, documents_per_query, scored):
            texts = [document_text(d, i) for i, d in enumerate(docs)]
            out.append(ScoredList(fuse_scores(self.fusion, query, texts, lst.scores), lst.embeddings))
        return out

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64)

    def settings(self) -> dict[str, Any]:
        return {**self.reranker.settings(), "fusion": self.fusion.as_dict()}

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """The wrapped model's checkpoint, recording this fusion so that a reload scores identically."""
        from .checkpoints import save_official

        save_official(self.reranker.model, path, self.reranker.tokenizer, self.settings())

    def describe(self) -> str:
        """One line saying how scores are made (for the CLI and the server)."""
        return (f"fused with BM25 over each request's documents ({self.fusion.transform}, "
                f"model weight {self.fusion.weight:g})")
