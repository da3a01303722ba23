"""lbnl: last-but-not-late interaction (LBNL) listwise reranking, the jina-reranker-v3 architecture.

>>> from lbnl import Reranker                                  # doctest: +SKIP
>>> reranker = Reranker.from_pretrained("path/to/checkpoint")  # doctest: +SKIP
>>> reranker.rerank("query", ["doc a", "doc b"], top_n=1)      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Reranker", "RerankResult", "LBNLError", "InvalidInputError", "CheckpointError", "__version__"]

from .errors import CheckpointError, InvalidInputError, LBNLError


def __getattr__(name: str) -> Any:
    if name in ("Reranker", "RerankResult"):
        from . import reranker

        return getattr(reranker, name)
    raise AttributeError(f"module 'lbnl' has no attribute {name!r}")
