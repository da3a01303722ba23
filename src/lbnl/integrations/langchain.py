"""LangChain: :class:`LBNLRerank`, a ``BaseDocumentCompressor`` (use it alone or in a
``ContextualCompressionRetriever``)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, PrivateAttr

from . import load_reranker


class LBNLRerank(BaseDocumentCompressor):
    """Rerank LangChain documents with an lbnl model; the best ``top_n`` come back with
    ``metadata["relevance_score"]`` set (their other metadata kept).

    Args:
        model: checkpoint directory, built-in name or hub id (default: the built-in model).
        top_n: documents returned (``None``: all).
        reranker: an already loaded lbnl reranker (then ``model`` and ``options`` are unused).
        options: keywords for ``Reranker.from_pretrained`` (``device``, ``preset``...).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Optional[str] = None
    top_n: Optional[int] = 3
    options: dict[str, Any] = {}
    _reranker: Any = PrivateAttr(default=None)

    def __init__(self, reranker: Any = None, **data: Any):
        super().__init__(**data)
        self._reranker = reranker

    @property
    def reranker(self) -> Any:
        self._reranker = load_reranker(self._reranker, self.model, self.options)
        return self._reranker

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        if not documents:
            return []
        results = self.reranker.rerank(query, [d.page_content for d in documents], top_n=self.top_n)
        out = []
        for r in results:
            doc = documents[r.index]
            out.append(Document(page_content=doc.page_content, id=doc.id,
                                metadata={**doc.metadata, "relevance_score": r.relevance_score}))
        return out
