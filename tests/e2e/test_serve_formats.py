"""Issue #17 wire formats through a real ``lbnl serve`` on loopback, each request shaped as its client sends it.

Cohere v1 ``rank_fields`` (the Cohere SDK names itself in ``X-Fern-SDK-Name``), Cohere v2
``max_tokens_per_doc`` (Haystack's CohereRanker sends 4096), ``return_documents`` with each API's
default, TEI's ``/rerank`` body, vLLM's ``/score``, and the served model's name. The real client
packages themselves run in ``test_clients.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from lbnl import Reranker
from lbnl.testing.server import ServerProcess

MAX_DOC = 64
COHERE_SDK_HEADERS = {"X-Fern-Language": "Python", "X-Fern-SDK-Name": "cohere", "X-Fern-SDK-Version": "5.15.0",
                      "Content-Type": "application/json"}
DOCS = ["Green tea catechins reduce inflammation.", "Coffee prices rose 20% this year.",
        "Green tea improves brain function and metabolism.", "Basketball is popular in the US."]


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    s = ServerProcess(["--model", str(tiny_checkpoint), "--device", "cpu", "--max-doc-length", str(MAX_DOC)],
                      tmp_path_factory.mktemp("formats") / "server.log")
    s.env.pop("LBNL_API_KEY", None)
    with s:
        yield s


def post(server: ServerProcess, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60)


def scores_by_index(results: list[dict], key: str = "relevance_score") -> dict[int, float]:
    return {r["index"]: r[key] for r in results}


def expected(reranker: Reranker, query: str, docs: list[str], max_doc_length: int = MAX_DOC) -> dict[int, float]:
    return {r.index: r.relevance_score for r in reranker.rerank(query, docs, max_doc_length=max_doc_length)}


def test_cohere_v1_rank_fields_and_default_without_documents(server: ServerProcess, tiny_reranker: Reranker) -> None:
    docs = [{"title": "Tea", "text": DOCS[0], "id": "a"}, {"title": "Markets", "text": DOCS[1]},
            {"text": DOCS[2]}, {"title": "Sport"}]
    body = {"model": "rerank-english-v3.0", "query": "green tea health", "documents": docs,
            "rank_fields": ["title", "text"], "top_n": 3}
    r = post(server, "/v1/rerank", body, COHERE_SDK_HEADERS)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["results"]) == 3 and all("document" not in x for x in out["results"]), "Cohere: default false"
    texts = ["title: Tea\ntext: " + DOCS[0], "title: Markets\ntext: " + DOCS[1], "text: " + DOCS[2], "title: Sport"]
    want = expected(tiny_reranker, body["query"], texts)
    got = scores_by_index(out["results"])
    assert got == {i: pytest.approx(want[i], abs=1e-6) for i in got}
    echoed = post(server, "/v1/rerank", body | {"return_documents": True}, COHERE_SDK_HEADERS).json()["results"]
    assert {x["index"]: x["document"] for x in echoed} == {x["index"]: docs[x["index"]] for x in echoed}
    bad = post(server, "/v1/rerank", body | {"documents": [{"title": "a"}, {"body": "b"}]}, COHERE_SDK_HEADERS)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "documents.1"
    assert "rank_fields" in bad.json()["detail"]


def test_cohere_v2_max_tokens_per_doc(server: ServerProcess, tiny_reranker: Reranker) -> None:
    docs = ["tea " * 50, "coffee " * 50, "short"]
    body = {"model": "rerank-v3.5", "query": "tea", "documents": docs, "top_n": 3, "max_tokens_per_doc": 4}
    r = post(server, "/v2/rerank", body, COHERE_SDK_HEADERS)
    assert r.status_code == 200, r.text
    out = r.json()
    assert all("document" not in x for x in out["results"])
    assert out["usage"]["truncated_documents"] == 2
    want = expected(tiny_reranker, "tea", docs, max_doc_length=4)
    assert scores_by_index(out["results"]) == {i: pytest.approx(s, abs=1e-6) for i, s in want.items()}
    q, d = tiny_reranker.count_tokens("tea", docs, max_doc_length=4)
    assert out["usage"]["total_tokens"] == q + d
    # Haystack's CohereRanker sends 4096: never above the server's own limit.
    big = post(server, "/v2/rerank", body | {"max_tokens_per_doc": 4096}, {"Content-Type": "application/json"}).json()
    want = expected(tiny_reranker, "tea", docs)
    assert scores_by_index(big["results"]) == {i: pytest.approx(s, abs=1e-6) for i, s in want.items()}
    assert post(server, "/v2/rerank", body | {"max_tokens_per_doc": 0}).status_code == 422


def test_jina_default_returns_documents(server: ServerProcess) -> None:
    body = {"model": "jina-reranker-v3", "query": "green tea", "documents": DOCS, "top_n": 2}
    for path in ("/v1/rerank", "/rerank"):
        results = post(server, path, body).json()["results"]
        assert [x["document"] for x in results] == [{"text": DOCS[x["index"]]} for x in results], path
    assert all("document" not in x for x in post(server, "/v2/rerank", body).json()["results"])


def test_tei_rerank_by_body_shape(server: ServerProcess, tiny_reranker: Reranker) -> None:
    body = {"query": "green tea", "texts": DOCS, "raw_scores": False, "return_text": True, "truncate": True,
            "truncation_direction": "Right"}
    r = post(server, "/rerank", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out, list) and [set(x) for x in out] == [{"index", "score", "text"}] * len(DOCS)
    assert [x["score"] for x in out] == sorted((x["score"] for x in out), reverse=True)
    assert all(x["text"] == DOCS[x["index"]] for x in out)
    want = expected(tiny_reranker, "green tea", DOCS)
    assert scores_by_index(out, "score") == {i: pytest.approx(s, abs=1e-6) for i, s in want.items()}
    plain = post(server, "/rerank", {"query": "green tea", "texts": DOCS}).json()
    assert [set(x) for x in plain] == [{"index", "score"}] * len(DOCS)
    left = post(server, "/rerank", body | {"truncation_direction": "Left"})
    assert left.status_code == 422 and left.json()["errors"][0]["field"] == "truncation_direction"
    missing = post(server, "/rerank", {"query": "tea"})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "documents"


def test_vllm_score(server: ServerProcess, tiny_reranker: Reranker) -> None:
    for path in ("/score", "/v1/score"):
        r = post(server, path, {"model": "m", "text_1": "green tea", "text_2": DOCS})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "list" and out["model"] == "ckpt"
        assert [x["index"] for x in out["data"]] == list(range(len(DOCS)))
        assert all(x["object"] == "score" for x in out["data"])
        want = expected(tiny_reranker, "green tea", DOCS)
        assert [x["score"] for x in out["data"]] == [pytest.approx(want[i], abs=1e-6) for i in range(len(DOCS))]
        assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0
    pairs = post(server, "/score", {"text_1": ["tea", "coffee"], "text_2": DOCS[:2]}).json()
    assert [x["score"] for x in pairs["data"]] == [
        pytest.approx(expected(tiny_reranker, q, [d])[0], abs=1e-6) for q, d in zip(["tea", "coffee"], DOCS[:2])]
    bad = post(server, "/score", {"text_1": ["a", "b"], "text_2": DOCS[:3]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "text_2"


def test_model_name_is_never_a_path(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "ckpt"
    assert httpx.get(server.url + "/health").json()["model"] == "ckpt"
    assert post(server, "/v1/rerank", {"query": "tea", "documents": ["a"]}).json()["model"] == "ckpt"
    assert "/tmp" not in httpx.get(server.url + "/metrics").text

    from lbnl.serve.app import public_model_name

    assert public_model_name("jinaai/jina-reranker-v3") == "jinaai/jina-reranker-v3"
    assert public_model_name("lbnl-small") == "lbnl-small"
    assert public_model_name("/some/where/my-model") == "my-model"


def test_openapi_lists_the_formats(server: ServerProcess) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/score", "/v1/score", "/rerank", "/v2/rerank"} <= set(schema["paths"])
    body = schema["paths"]["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert len(body["oneOf"]) == 2
    props = schema["components"]["schemas"]["RerankRequest"]["properties"]
    assert {"rank_fields", "max_tokens_per_doc", "return_documents"} <= set(props)


def test_rerankers_tei_provider_payload(server: ServerProcess) -> None:
    """Exactly what rerankers' ``text-embeddings-inference`` provider (0.10) posts, and how it reads the answer."""
    import json

    docs = ["Green tea is healthy.", "Coffee prices rose."]
    payload = json.dumps({"model": "lbnl", "query": "green tea", "texts": docs, "top_n": len(docs),
                          "return_text": True})
    r = httpx.post(server.url + "/rerank", content=payload, timeout=60,
                   headers={"accept": "application/json", "content-type": "application/json",
                            "Authorization": "Bearer none"})
    assert r.status_code == 200, r.text
    ranked = [(docs[x["index"]], x["score"], x["text"]) for x in r.json()]
    assert sorted(d for d, _, _ in ranked) == sorted(docs) and all(d == t for d, _, t in ranked)
