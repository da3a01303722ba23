"""The API users of other rerankers try first: the official result dicts, sentence-transformers'
``rank`` / ``predict``, FlagEmbedding's ``compute_score``, scores in input order, framework documents."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lbnl import InvalidInputError, Reranker

QUERY = "green tea and the heart"
DOCS = ["Green tea catechins and heart disease.", "Coffee prices rose.", "Tea, the heart and green leaves.",
        "Basketball in the US."]


def test_score_is_rerank_in_input_order(tiny_reranker: Reranker) -> None:
    scores = tiny_reranker.score(QUERY, DOCS)
    ranked = tiny_reranker.rerank(QUERY, DOCS)
    assert len(scores) == len(DOCS) and all(isinstance(s, float) for s in scores)
    assert [r.index for r in ranked] == sorted(range(len(DOCS)), key=lambda i: -scores[i])
    assert [r.relevance_score for r in ranked] == [scores[r.index] for r in ranked]
    many = tiny_reranker.score_many([QUERY, "coffee"], [DOCS, DOCS[:2]])
    assert many[0] == pytest.approx(scores, abs=1e-6) and len(many[1]) == 2


def test_results_read_like_the_official_dicts(tiny_reranker: Reranker) -> None:
    (best, *_) = tiny_reranker.rerank(QUERY, DOCS, return_embeddings=True)
    assert best["relevance_score"] == best.relevance_score and best["index"] == best.index
    assert best["document"] is DOCS[best.index] and best["embedding"].shape == (512,)
    assert set(dict(best)) == {"document", "relevance_score", "index", "embedding"}
    plain = tiny_reranker.rerank(QUERY, DOCS)[0]
    assert "embedding" not in plain and set(plain.keys()) == {"document", "relevance_score", "index"}
    with pytest.raises(KeyError):
        plain["score"]


def test_sentence_transformers_rank_and_predict(tiny_reranker: Reranker) -> None:
    scores = tiny_reranker.score(QUERY, DOCS)
    ranked = tiny_reranker.rank(QUERY, DOCS, top_k=2, return_documents=True)
    assert [r["corpus_id"] for r in ranked] == sorted(range(len(DOCS)), key=lambda i: -scores[i])[:2]
    assert ranked[0]["text"] == DOCS[ranked[0]["corpus_id"]] and ranked[0]["score"] == pytest.approx(max(scores))
    assert "text" not in tiny_reranker.rank(QUERY, DOCS)[0]
    pairs = [(QUERY, DOCS[0]), ("coffee", DOCS[1]), (QUERY, DOCS[1]), (QUERY, DOCS[2]), (QUERY, DOCS[3])]
    predicted = tiny_reranker.predict(pairs)
    assert isinstance(predicted, np.ndarray) and predicted.shape == (5,)
    np.testing.assert_allclose(predicted[[0, 2, 3, 4]], scores, atol=1e-6)  # pairs of one query: one list
    np.testing.assert_allclose(predicted[1], tiny_reranker.score("coffee", [DOCS[1]])[0], atol=1e-6)


def test_flagembedding_compute_score(tiny_reranker: Reranker) -> None:
    one = tiny_reranker.compute_score([QUERY, DOCS[0]])
    assert isinstance(one, float) and one == pytest.approx(tiny_reranker.score(QUERY, [DOCS[0]])[0], abs=1e-6)
    many = tiny_reranker.compute_score([[QUERY, d] for d in DOCS], normalize=True)
    raw = tiny_reranker.score(QUERY, DOCS)
    assert many == pytest.approx([(s + 1) / 2 for s in raw], abs=1e-6) and all(0 <= s <= 1 for s in many)


@dataclass
class LangChainLike:
    page_content: str
    metadata: dict


class LlamaIndexLike:
    def __init__(self, text: str):
        self._text = text

    def get_content(self) -> str:
        return self._text


def test_documents_from_frameworks_and_dicts(tiny_reranker: Reranker) -> None:
    docs = [DOCS[0], {"text": DOCS[1]}, {"content": DOCS[2]}, LangChainLike(DOCS[3], {"id": 4})]
    assert tiny_reranker.score(QUERY, docs) == pytest.approx(tiny_reranker.score(QUERY, DOCS), abs=1e-6)
    assert tiny_reranker.score(QUERY, [LlamaIndexLike(DOCS[0])]) == pytest.approx(
        tiny_reranker.score(QUERY, [DOCS[0]]), abs=1e-6)
    ranked = tiny_reranker.rerank(QUERY, docs)
    assert all(r.document is docs[r.index] for r in ranked)
    with pytest.raises(InvalidInputError, match="document 1"):
        tiny_reranker.score(QUERY, ["a", {"body": "b"}])
    with pytest.raises(InvalidInputError, match="pair 0"):
        tiny_reranker.predict(["not a pair"])


def test_module_entry_point_and_version() -> None:
    import lbnl

    done = subprocess.run([sys.executable, "-m", "lbnl", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"lbnl {lbnl.__version__}"


def test_named_models_are_never_paths(tiny_checkpoint: Path, tiny_reranker: Reranker) -> None:
    assert tiny_reranker.name == tiny_checkpoint.name and tiny_reranker.source == tiny_checkpoint


def test_documents_may_be_a_generator(tiny_reranker: Reranker) -> None:
    ranked = tiny_reranker.rerank(QUERY, (d for d in DOCS))
    assert sorted(r.document for r in ranked) == sorted(DOCS)
    assert [r.relevance_score for r in ranked] == pytest.approx(sorted(tiny_reranker.score(QUERY, DOCS), reverse=True))
