"""The scorer interface the evaluation harness reranks through, its lbnl and first-stage scorers, and score fusion.

A scorer only maps (query, candidate texts) to scores, so a baseline, a pointwise model and an
LBNL listwise model all run through the same harness and are measured the same way.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from ..errors import InvalidInputError


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


def _checkpoint_fingerprint(name: str) -> list[list[object]]:
    path = Path(name)
    if not path.is_dir():
        return []
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.iterdir()) if f.is_file()]


class LBNLScorer:
    """An lbnl :class:`~lbnl.reranker.Reranker` as a scorer.

    Args:
        reranker: the loaded reranker (shared, not modified).
        max_doc_length: tokens kept per document.
        max_query_length: tokens kept of the query.
        block_size: documents per prompt (default: the reranker's, 125 for the official setup).
            Smaller blocks are faster on a CPU but change the scores.
        pointwise: score each document alone, one per prompt (a pointwise baseline with the same
            model); ``False`` forces listwise blocks; default: the reranker's mode.
        instruction: optional instruction placed in every prompt.
        name: label in tables (default ``lbnl:<model>``, ``+pointwise`` when pointwise).
    """

    def __init__(self, reranker: Any, *, max_doc_length: int = 2048, max_query_length: int = 512,
                 block_size: int | None = None, pointwise: bool | None = None, instruction: str | None = None,
                 name: str | None = None):
        for label, value in (("max_doc_length", max_doc_length), ("max_query_length", max_query_length),
                             ("block_size", block_size if block_size is not None else 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"{label} must be a positive integer, got {value!r}")
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
            "name": self.name, "model": str(self.reranker.name),
            "checkpoint": _checkpoint_fingerprint(str(self.reranker.name)),
            "dtype": str(self.reranker.model.dtype), "max_doc_length": self.max_doc_length,
            "max_query_length": self.max_query_length, "block_size": self.reranker.block_size,
            "pointwise": self.pointwise, "instruction": self.instruction,
        }

    def score(self, queries: list[str], candidates: list[list[str]]) -> list[list[float]]:
        if len(queries) != len(candidates):
            raise InvalidInputError("score needs one candidate list per query")
        options = dict(max_doc_length=self.max_doc_length, max_query_length=self.max_query_length,
                       instruction=self.instruction)
        out = []
        for docs, results in zip(candidates, self.reranker.rerank_many(queries, candidates, **options)):
            aligned = [0.0] * len(docs)
            for r in results:
                aligned[r.index] = r.relevance_score
            out.append(aligned)
        return out


#: Fusion methods reported as extra rows.
FUSIONS = ("rrf", "linear")


def _minmax(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 0.0 for v in values]


def fuse(method: str, first_stage: Sequence[float], reranked: Sequence[float], *, weight: float = 0.5,
         rrf_k: int = 60) -> list[float]:
    """Combine first-stage and reranker scores of one query's candidates (aligned lists).

    Args:
        method: ``"rrf"`` (reciprocal rank fusion, ``1/(rrf_k + rank)`` summed over both rankings)
            or ``"linear"`` (``weight * minmax(reranked) + (1 - weight) * minmax(first_stage)``).
        first_stage: first-stage scores; the candidates must be in first-stage order.
        reranked: reranker scores.
        weight: the reranker's weight in linear fusion, in [0, 1].
        rrf_k: the RRF rank offset (60 as in Cormack et al.).
    """
    if len(first_stage) != len(reranked):
        raise ValueError("fusion needs aligned score lists")
    if not reranked:
        return []
    if method == "linear":
        if not 0 <= weight <= 1:
            raise InvalidInputError(f"the fusion weight must be in [0, 1], got {weight}")
        return [weight * r + (1 - weight) * f for f, r in zip(_minmax(first_stage), _minmax(reranked))]
    if method == "rrf":
        order = sorted(range(len(reranked)), key=lambda i: (-reranked[i], i))
        rerank_rank = {i: r for r, i in enumerate(order, 1)}
        return [1 / (rrf_k + i + 1) + 1 / (rrf_k + rerank_rank[i]) for i in range(len(reranked))]
    raise InvalidInputError(f"unknown fusion {method!r} (choose from {', '.join(FUSIONS)})")


def order_by_scores(doc_ids: Sequence[str], scores: Sequence[float]) -> list[tuple[str, float]]:
    """``(doc_id, score)`` best first; ties keep the input (first-stage) order."""
    order = sorted(range(len(doc_ids)), key=lambda i: (-scores[i], i))
    return [(doc_ids[i], float(scores[i])) for i in order]
