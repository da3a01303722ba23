"""Rank fusion of two systems' scores over the same candidates: reciprocal rank fusion and min-max
linear interpolation (the evaluation's fused rows: first stage with reranker)."""

from __future__ import annotations

from typing import Sequence

from ..errors import InvalidInputError

#: Fusion methods: reciprocal rank fusion and min-max linear interpolation.
FUSIONS = ("rrf", "linear")


def minmax(values: Sequence[float]) -> list[float]:
    """Rescale to [0, 1]; all zeros when every value is equal."""
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 0.0 for v in values]


def fuse(method: str, first_stage: Sequence[float], reranked: Sequence[float], *, weight: float = 0.5,
         rrf_k: int = 60) -> list[float]:
    """Combine first-stage and reranker scores of one query's candidates (aligned lists).

    Args:
        method: ``"rrf"`` (reciprocal rank fusion, ``1/(rrf_k + rank)`` summed over both rankings)
            or ``"linear"`` (``weight * minmax(reranked) + (1 - weight) * minmax(first_stage)``).
        first_stage: first-stage scores; for RRF the candidates must be in first-stage order.
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
        return [weight * r + (1 - weight) * f for f, r in zip(minmax(first_stage), minmax(reranked))]
    if method == "rrf":
        order = sorted(range(len(reranked)), key=lambda i: (-reranked[i], i))
        rerank_rank = {i: r for r, i in enumerate(order, 1)}
        return [1 / (rrf_k + i + 1) + 1 / (rrf_k + rerank_rank[i]) for i in range(len(reranked))]
    raise InvalidInputError(f"unknown fusion {method!r} (choose from {', '.join(FUSIONS)})")
