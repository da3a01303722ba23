"""Lexical fusion: the coverage transform means the same in every request; minmax is per request."""

from __future__ import annotations

import pytest

from lbnl import FusedReranker, Fusion
from lbnl.fusion import fuse_scores
from lbnl.ir.bm25 import query_term_coverage

QUERY = "green tea and the heart"
DOCS = ["Green tea catechins and heart disease.", "Coffee prices rose.", "Tea, the heart and green leaves."]


def test_query_term_coverage() -> None:
    assert query_term_coverage(QUERY, DOCS) == pytest.approx([1.0, 0.0, 1.0])
    assert query_term_coverage("green teas", ["Green tea"]) == [1.0]  # stemmed terms
    assert query_term_coverage("the of", DOCS) == [0.0] * 3 and query_term_coverage(QUERY, []) == []


def test_coverage_scores_do_not_depend_on_the_other_documents() -> None:
    fusion = Fusion(0.6, "coverage")
    model = [0.2, 0.9, -0.1]
    fused = fuse_scores(fusion, QUERY, DOCS, model)
    assert fused == pytest.approx([0.6 * m + 0.4 * c for m, c in zip(model, [1.0, 0.0, 1.0])])
    alone = [fuse_scores(fusion, QUERY, [d], [m])[0] for d, m in zip(DOCS, model)]
    assert alone == pytest.approx(fused)
    assert fuse_scores(Fusion(0.6, "minmax"), QUERY, DOCS[:1], model[:1]) == [0.0]  # minmax pins a lone document


def test_fused_reranker_with_coverage(tiny_reranker) -> None:
    fused = FusedReranker(tiny_reranker, Fusion(0.0, "coverage"))
    scores = fused.score(QUERY, DOCS)
    assert scores == pytest.approx([1.0, 0.0, 1.0])
    assert fused.compute_score([QUERY, DOCS[1]], normalize=True) == pytest.approx(0.5)
    with pytest.raises(Exception, match="unknown fusion transform"):
        Fusion(0.5, "fixed")


def test_coverage_counts_distinct_stemmed_query_terms() -> None:
    cover = query_term_coverage("health benefits of green tea",
                                ["Green tea is healthy and has benefits.", "Basketball.", "Tea"])
    assert cover == pytest.approx([3 / 4, 0.0, 1 / 4])  # green, tea, benefit (health != healthi)


def test_describe_says_how_each_transform_scores(tiny_reranker) -> None:
    coverage = FusedReranker(tiny_reranker, Fusion(0.5, "coverage")).describe()
    assert "cosine" in coverage and "query terms" in coverage and "BM25" not in coverage
    assert "over each request's documents" in FusedReranker(tiny_reranker, Fusion(0.7, "minmax")).describe()
