"""The scorer interface the evaluation harness reranks through, and its lbnl and first-stage scorers.

A scorer only maps (query, candidate texts) to scores, so a baseline, a pointwise model and an
LBNL listwise model all run through the same harness and are measured the same way.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from ..defaults import MAX_DOC_LENGTH, MAX_QUERY_LENGTH
from ..errors import InvalidInputError

if TYPE_CHECKING:
    from ..base import BaseReranker


@runtime_checkable
class Scorer(Protocol):
    """Scores each query's candidate texts; higher is better.

    ``score`` takes a batch of queries and, per query, its candidate texts in first-stage order,
    and returns one score per candidate, aligned with the input. A scorer may also expose a
    ``config`` dict: everything that changes its scores, used to key resumable results
    (default: ``{"name": name}``).
    """

    name: str

    def score(self, queries: list[str], candidates: list[list[str]]) -> list[list[float]]: ...


def scorer_config(scorer: Scorer) -> dict[str, Any]:
    """The scorer's ``config`` if it has one, else its name."""
    config = getattr(scorer, "config", None)
    return dict(config) if isinstance(config, dict) else {"name": scorer.name}


class FirstStageScorer:
    """Keeps the first-stage order (scores fall with the input position): the baseline through the harness."""

    name = "first-stage"

    def score(self, queries: list[str], candidates: list[list[str]]) -> list[list[float]]:
        return [[float(len(docs) - i) for i in range(len(docs))] for docs in candidates]


def _checkpoint_fingerprint(source: object) -> list[list[object]]:
    if source is None:
        return []
    path = Path(str(source))
    if not path.is_dir():
        return []
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.iterdir()) if f.is_file()]


class LBNLScorer:
    """An lbnl reranker as a scorer.

    Args:
        reranker: the loaded reranker (shared, not modified); a :class:`~lbnl.fusion.FusedReranker` is
            scored through the model it wraps.
        max_doc_length: tokens kept per document.
        max_query_length: tokens kept of the query.
        block_size: documents per prompt (default: the reranker's, 125 for the official setup).
            Smaller blocks are faster on a CPU but change the scores.
        pointwise: score each document alone, one per prompt (a pointwise baseline with the same
            model); ``False`` forces listwise blocks; default: the reranker's mode.
        instruction: optional instruction placed in every prompt.
        name: label in tables (default ``lbnl:<model>``, ``+pointwise`` when pointwise).

    Scores are always the model's own: a reranker that ships with candidate-BM25 fusion is read
    through the model it wraps and its fusion reported as ``shipped_fusion``, so the harness shows
    the model alone and the fused row as shipped from one run.
    """

    def __init__(self, reranker: "BaseReranker", *, max_doc_length: int = MAX_DOC_LENGTH,
                 max_query_length: int = MAX_QUERY_LENGTH,
                 block_size: int | None = None, pointwise: bool | None = None, instruction: str | None = None,
                 name: str | None = None):
        for label, value in (("max_doc_length", max_doc_length), ("max_query_length", max_query_length),
                             ("block_size", block_size if block_size is not None else 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"{label} must be a positive integer, got {value!r}")
        from ..reranker import Reranker

        self.shipped_fusion = getattr(reranker, "fusion", None)
        reranker = getattr(reranker, "reranker", reranker)
        if not isinstance(reranker, Reranker):
            raise InvalidInputError(f"LBNLScorer needs an lbnl Reranker, got {type(reranker).__name__}")
        pointwise = reranker.pointwise if pointwise is None else pointwise
        if (block_size is not None and block_size != reranker.block_size) or pointwise != reranker.pointwise:
            reranker = copy.copy(reranker)
            reranker.block_size = block_size or reranker.block_size
            reranker.pointwise = pointwise
        self.reranker = reranker
        self.max_doc_length = max_doc_length
        self.max_query_length = max_query_length
        self.pointwise = pointwise
        self.instruction = instruction
        model = os.path.basename(os.path.normpath(str(reranker.name))) or str(reranker.name)
        self.name = name or f"lbnl:{model}" + ("+pointwise" if pointwise else "")

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": self.name, "model": str(self.reranker.name), "source": str(self.reranker.source or ""),
            "checkpoint": _checkpoint_fingerprint(self.reranker.source),
            "dtype": str(self.reranker.model.dtype), "max_doc_length": self.max_doc_length,
            "max_query_length": self.max_query_length, "block_size": self.reranker.block_size,
            "pointwise": self.pointwise, "instruction": self.instruction,
        }

    def score(self, queries: list[str], candidates: list[list[str]]) -> list[list[float]]:
        if len(queries) != len(candidates):
            raise InvalidInputError("score needs one candidate list per query")
        options = dict(max_doc_length=self.max_doc_length, max_query_length=self.max_query_length,
                       instruction=self.instruction)
        return self.reranker.score_many(queries, candidates, **options)


def order_by_scores(doc_ids: Sequence[str], scores: Sequence[float]) -> list[tuple[str, float]]:
    """``(doc_id, score)`` best first; ties keep the input (first-stage) order."""
    order = sorted(range(len(doc_ids)), key=lambda i: (-scores[i], i))
    return [(doc_ids[i], float(scores[i])) for i in order]
