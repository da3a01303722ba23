"""LlamaIndex: :class:`LBNLRerankPostprocessor`, a node postprocessor (``node_postprocessors=[...]`` of a
query engine or retriever)."""

from __future__ import annotations

from typing import Any, List, Optional

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from . import load_reranker


class LBNLRerankPostprocessor(BaseNodePostprocessor):
    """Rerank retrieved nodes with an lbnl model; the best ``top_n`` come back with their ``score`` set.

    Args:
        model: checkpoint directory, built-in name or hub id (default: the built-in model).
        top_n: nodes returned (``None``: all).
        reranker: an already loaded lbnl reranker.
        options: keywords for ``Reranker.from_pretrained``.
    """

    model: Optional[str] = Field(default=None, description="checkpoint, built-in name or hub id")
    top_n: Optional[int] = Field(default=3, description="nodes returned")
    options: dict = Field(default_factory=dict, description="Reranker.from_pretrained keywords")
    _reranker: Any = PrivateAttr(default=None)

    def __init__(self, reranker: Any = None, **data: Any):
        super().__init__(**data)
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        return "LBNLRerankPostprocessor"

    def _postprocess_nodes(self, nodes: List[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("LBNLRerankPostprocessor needs the query (a query bundle)")
        if not nodes:
            return []
        self._reranker = load_reranker(self._reranker, self.model, self.options)
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        results = self._reranker.rerank(query_bundle.query_str, texts, top_n=self.top_n)
        return [NodeWithScore(node=nodes[r.index].node, score=r.relevance_score) for r in results]
