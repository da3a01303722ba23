"""Retrieval metrics (trec_eval through pytrec_eval) and paired significance tests.

Rankings are passed as ordered id lists and handed to trec_eval with strictly decreasing
rank-based scores, so the metric sees exactly our order (trec_eval would otherwise break score
ties by document id). A judged query with no retrieved document scores 0 on every metric
(``trec_eval -c``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..errors import InvalidInputError
from .beir import Qrels

#: Metric keys, in table order; the first is the headline.
METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")
LABELS = {"ndcg@10": "nDCG@10", "recall@100": "Recall@100", "mrr@10": "MRR@10", "map@100": "MAP@100"}
_TREC = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "map@100": "map_cut_100"}

Rankings = Mapping[str, Sequence[str]]
PerQuery = dict[str, dict[str, float]]


def _as_run(rankings: Rankings, depth: int | None = None) -> dict[str, dict[str, float]]:
    run = {}
    for qid, docs in rankings.items():
        docs = list(dict.fromkeys(docs))[:depth]
        if docs:
            run[qid] = {d: float(len(docs) - r) for r, d in enumerate(docs)}
    return run


def per_query_metrics(qrels: Qrels, rankings: Rankings, query_ids: Sequence[str] | None = None) -> PerQuery:
    """nDCG@10, Recall@100, MRR@10 and MAP@100 of each query.

    Args:
        qrels: query id -> {doc id -> relevance} (graded for nDCG, relevance >= 1 counts as relevant otherwise).
        rankings: query id -> document ids, best first.
        query_ids: the queries to report (default: those of ``rankings``); each must be judged.
    """
    import pytrec_eval

    wanted = list(rankings if query_ids is None else query_ids)
    unjudged = [q for q in wanted if q not in qrels]
    if unjudged:
        raise InvalidInputError(f"queries without judgements: {', '.join(unjudged[:5])}")
    judged = {q: {d: int(r) for d, r in qrels[q].items()} for q in wanted}
    subset = {q: rankings.get(q, []) for q in wanted}
    full = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100", "map_cut.100"}).evaluate(
        _as_run(subset))
    top10 = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(_as_run(subset, 10))
    out: PerQuery = {}
    for q in wanted:
        values = {m: float(full.get(q, {}).get(key, 0.0)) for m, key in _TREC.items()}
        values["mrr@10"] = float(top10.get(q, {}).get("recip_rank", 0.0))
        out[q] = {m: values[m] for m in METRICS}
    return out


def mean_metrics(per_query: PerQuery) -> dict[str, float]:
    """The mean of each metric over the queries (0 for every metric when there are none)."""
    n = len(per_query)
    return {m: (sum(v[m] for v in per_query.values()) / n if n else 0.0) for m in METRICS}


def paired_tests(baseline: Sequence[float], system: Sequence[float], permutations: int = 10_000,
                 seed: int = 0) -> dict[str, float]:
    """Paired two-sided tests of ``system`` against ``baseline`` (per-query values in the same order).

    Returns the mean difference, the paired t-test p-value (scipy) and a seeded paired
    randomisation (sign-flip) test p-value. Identical inputs give p = 1.
    """
    import numpy as np
    from scipy import stats

    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(system, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired tests need the same queries on both sides")
    diff = b - a
    n = len(diff)
    mean = float(diff.mean()) if n else 0.0
    if n < 2 or not np.any(diff):
        return {"mean_delta": mean, "t_test_p": 1.0, "randomization_p": 1.0, "queries": n}
    t_p = float(stats.ttest_rel(b, a).pvalue)
    if not np.isfinite(t_p):
        t_p = 0.0 if mean else 1.0
    rng = np.random.default_rng(seed)
    observed = abs(diff.mean())
    hits = 0
    for start in range(0, permutations, 1000):
        size = min(1000, permutations - start)
        signs = rng.choice((-1.0, 1.0), size=(size, n))
        hits += int(np.sum(np.abs(signs @ diff) / n >= observed - 1e-12))
    return {"mean_delta": mean, "t_test_p": t_p, "randomization_p": (hits + 1) / (permutations + 1), "queries": n}
