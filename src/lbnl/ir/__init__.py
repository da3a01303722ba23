"""Information-retrieval building blocks with no model in them: BEIR data, BM25, metrics and
significance tests, rank fusion. Evaluation, training and lexical fusion share them."""

from __future__ import annotations

from .beir import BeirDataset, Qrels, document_text, load_beir
from .bm25 import BM25Index, BM25Params, candidate_bm25, default_cache_dir, first_stage_hits
from .fusion import FUSIONS, fuse, minmax
from .metrics import LABELS, METRICS, mean_metrics, paired_tests, per_query_metrics

__all__ = ["BM25Index", "BM25Params", "BeirDataset", "FUSIONS", "LABELS", "METRICS", "Qrels", "candidate_bm25",
           "default_cache_dir", "document_text", "first_stage_hits", "fuse", "load_beir", "mean_metrics", "minmax",
           "paired_tests", "per_query_metrics"]
