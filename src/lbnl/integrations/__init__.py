"""lbnl inside RAG frameworks, in process: a LangChain document compressor, a LlamaIndex node
postprocessor and a Haystack 2 ranker component. Each module imports its framework, so install the
matching extra (``lbnl[langchain]``, ``lbnl[llamaindex]``, ``lbnl[haystack]``) and import the module:

>>> from lbnl.integrations.langchain import LBNLRerank            # doctest: +SKIP
>>> from lbnl.integrations.llamaindex import LBNLRerankPostprocessor  # doctest: +SKIP
>>> from lbnl.integrations.haystack import LBNLRanker              # doctest: +SKIP

Each reads a document's text the framework's way, keeps its metadata, and records the score
(``relevance_score`` in LangChain metadata, the node's or document's ``score`` elsewhere). The
reranker is loaded lazily on first use (``Reranker.from_pretrained(model)``) unless one is passed.
"""

from __future__ import annotations

from typing import Any


def load_reranker(reranker: Any, model: str | None, options: dict[str, Any] | None) -> Any:
    """``reranker`` when given, else ``Reranker.from_pretrained(model, **options)``."""
    if reranker is not None:
        return reranker
    from ..reranker import Reranker

    return Reranker.from_pretrained(model, **(options or {}))
