"""lbnl: last-but-not-late interaction (LBNL) listwise reranking, the jina-reranker-v3 architecture.

>>> from lbnl import Reranker                                  # doctest: +SKIP
>>> reranker = Reranker.from_pretrained()                      # doctest: +SKIP  (the built-in lbnl-small-v3)
>>> reranker.rerank("query", ["doc a", "doc b"], top_n=1)      # doctest: +SKIP
>>> reranker.score("query", ["doc a", "doc b"])                # doctest: +SKIP  (input order)

Importing ``lbnl`` is light: torch and transformers load when a reranker is first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import CheckpointError, InvalidInputError, LBNLError

__version__ = "0.2.0"

#: Public names loaded on first use, and the module each comes from.
_LAZY = {
    "Reranker": "reranker", "BaseReranker": "base", "RerankResult": "base",
    "FusedReranker": "fusion", "CheckpointInfo": "checkpoints", "Fusion": "checkpoints",
}
__all__ = sorted([*_LAZY, "LBNLError", "InvalidInputError", "CheckpointError", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lbnl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
