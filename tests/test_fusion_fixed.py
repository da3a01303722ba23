"""The fixed (request-independent) lexical fusion of lbnl-small v2: lbnl.fusion.fuse_fixed."""

from __future__ import annotations

import pytest

from lbnl.errors import InvalidInputError
from lbnl.fusion import fuse_fixed, query_term_coverage


def test_coverage_counts_distinct_stemmed_query_terms() -> None:
    cover = query_term_coverage("health benefits of green tea",
                                ["Green tea is healthy and has benefits.", "Basketball.", "Tea"])
    assert cover[0] == pytest.approx(3 / 4)         # green, tea, benefit (health != healthi)
    assert cover[1] == 0.0
    assert cover[2] == pytest.approx(1 / 4)
    assert query_term_coverage("the of and", ["the cat"]) == [0.0]   # stopwords only
    assert query_term_coverage("tea", []) == []


def test_fixed_fusion_does_not_depend_on_the_other_documents() -> None:
    q = "capital of France"
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "Berlin is in Germany."]
    scores = [0.4, 0.1, 0.2]
    together = fuse_fixed(q, docs, scores, 0.7)
    alone = [fuse_fixed(q, [d], [s], 0.7)[0] for d, s in zip(docs, scores)]
    assert together == pytest.approx(alone)
    assert alone[0] > alone[1] and alone[0] != 0.0   # a lone document keeps a meaningful score
    assert together[0] == pytest.approx(0.7 * 0.4 + 0.3 * 1.0)


def test_weight_one_is_the_model_alone_and_bad_weights_fail() -> None:
    assert fuse_fixed("q", ["a", "b"], [0.3, -0.2], 1.0) == [0.3, -0.2]
    with pytest.raises(InvalidInputError):
        fuse_fixed("q", ["a"], [0.1], 1.5)
    with pytest.raises(ValueError):
        fuse_fixed("q", ["a"], [0.1, 0.2], 0.5)
