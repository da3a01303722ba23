"""Haystack 2: :class:`LBNLRanker`, a ranker component for pipelines (after a retriever)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional

from haystack import Document, component, default_from_dict, default_to_dict

from . import load_reranker


@component
class LBNLRanker:
    """Rank Haystack documents with an lbnl model; returns copies with ``score`` set, best first.

    Args:
        model: checkpoint directory, built-in name or hub id (default: the built-in model).
        top_k: documents returned (``None``: all); ``run(top_k=...)`` overrides it.
        options: keywords for ``Reranker.from_pretrained``.
        reranker: an already loaded lbnl reranker (not serialised).
    """

    def __init__(self, model: Optional[str] = None, top_k: Optional[int] = 10,
                 options: Optional[Dict[str, Any]] = None, reranker: Any = None):
        self.model = model
        self.top_k = top_k
        self.options = dict(options or {})
        self._reranker = reranker

    def warm_up(self) -> None:
        """Load the model (pipelines call this before the first run)."""
        self._reranker = load_reranker(self._reranker, self.model, self.options)

    def to_dict(self) -> Dict[str, Any]:
        return default_to_dict(self, model=self.model, top_k=self.top_k, options=self.options)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "LBNLRanker":
        return default_from_dict(cls, data)

    @component.output_types(documents=List[Document])
    def run(self, query: str, documents: List[Document], top_k: Optional[int] = None) -> Dict[str, List[Document]]:
        if not documents:
            return {"documents": []}
        self.warm_up()
        results = self._reranker.rerank(query, [d.content or "" for d in documents],
                                        top_n=top_k if top_k is not None else self.top_k)
        return {"documents": [replace(documents[r.index], score=r.relevance_score) for r in results]}
