"""Evaluation on BEIR-layout data: BM25 first stage, reranking through a scorer, metrics and significance.

Heavy pieces (bm25s, pytrec_eval, scipy, matplotlib, torch) load inside the functions that use them.

>>> from lbnl.eval import load_beir, first_stage_hits, LBNLScorer, evaluate_rerank   # doctest: +SKIP
>>> data = load_beir("path/to/scifact", "test")                                       # doctest: +SKIP
>>> hits = first_stage_hits(data, k=100)                                               # doctest: +SKIP
>>> evaluate_rerank(LBNLScorer(reranker), data, data.query_ids[:50], hits, k=100)      # doctest: +SKIP
"""

from __future__ import annotations

from ..ir import (BeirDataset, BM25Index, BM25Params, default_cache_dir, document_text, first_stage_hits, fuse,
                  load_beir, mean_metrics, METRICS, paired_tests, per_query_metrics)
from .run import EvalConfig, EvalResult, evaluate_rerank, rerank_hits, run_evaluation, sample_queries
from .scorers import FirstStageScorer, LBNLScorer, Scorer, order_by_scores

__all__ = [
    "BeirDataset", "load_beir", "document_text", "BM25Index", "BM25Params", "default_cache_dir", "first_stage_hits",
    "METRICS", "per_query_metrics", "mean_metrics", "paired_tests", "EvalConfig", "EvalResult", "evaluate_rerank",
    "rerank_hits", "run_evaluation", "sample_queries", "Scorer", "FirstStageScorer", "LBNLScorer", "fuse",
    "order_by_scores",
]
