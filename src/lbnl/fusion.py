"""Lexical fusion: a reranker whose scores are blended with BM25 over each request's own documents.

A model too small to rank alone (an early built-in lbnl-small) ships with a fusion setting in its
checkpoint, and ``Reranker.from_pretrained`` then returns a :class:`FusedReranker` around the
model: BM25 over the candidates is the only lexical evidence a rerank call has, since it never sees
a corpus. Two transforms exist:

- ``coverage``: ``w * cos + (1 - w) * coverage``, where ``coverage`` is the fraction of the query's
  terms (stemmed, stopwords removed) that the document holds. Each score depends on its query and
  document only, so it means the same in every request: thresholds, merged results and a lone
  document's score stay meaningful.
- ``minmax``: ``w * minmax(model) + (1 - w) * minmax(bm25)`` over each request (BM25 with the
  request's documents as its corpus). Scores only compare within one request (a lone document
  always scores 0); the first lbnl-small shipped with it.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .checkpoints.info import Fusion
from .base import BaseReranker, Document, ScoredList, document_text
from .ir.bm25 import candidate_bm25, query_term_coverage
from .ir.fusion import minmax


def fuse_scores(fusion: Fusion, query: str, texts: Sequence[str], scores: Sequence[float]) -> list[float]:
    """Blend one request's model scores with BM25 over its documents, as ``fusion`` says."""
    if not scores:
        return []
    w = fusion.weight
    if fusion.transform == "minmax":
        return [w * m + (1 - w) * b for m, b in zip(minmax(scores), minmax(candidate_bm25(query, texts)))]
    return [w * float(m) + (1 - w) * c for m, c in zip(scores, query_term_coverage(query, texts))]


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
        if self.fusion.transform == "minmax":
            return np.asarray(scores, dtype=np.float64)  # already in [0, 1]
        return (np.asarray(scores, dtype=np.float64) + 1.0) / 2.0  # w * [-1, 1] + (1 - w) * [0, 1] within [-1, 1]

    def settings(self) -> dict[str, Any]:
        return {**self.reranker.settings(), "fusion": self.fusion.as_dict()}

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """The wrapped model's checkpoint, recording this fusion so that a reload scores identically."""
        from .checkpoints import save_official

        save_official(self.reranker.model, path, self.reranker.tokenizer, self.settings())

    def describe(self) -> str:
        """One line saying how scores are made (for the CLI and the server)."""
        w = self.fusion.weight
        if self.fusion.transform == "coverage":
            return f"{w:g} x cosine + {1 - w:g} x the share of query terms in the document (coverage fusion)"
        return f"fused with BM25 over each request's documents (min-max, model weight {w:g})"
