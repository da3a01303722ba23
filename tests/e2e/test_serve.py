"""``lbnl serve`` end to end: real server processes on loopback, a real HTTP client.

Two servers start once for the module (in parallel): ``server`` with ordinary settings, and
``slow_server`` whose ``--test-batch-delay-ms`` makes every batch take 1.5 s, so overload, the
request timeout and graceful shutdown can be tested by ordering events, not by racing them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbnl import Reranker
from lbnl.testing.server import ServerProcess, serving

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
MAX_DOC_LENGTH = 64
MAX_BODY = 200_000
DELAY_S = 1.5
TIMEOUT_S = 2.4


@pytest.fixture(scope="module")
def servers(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("serve-logs")
    model = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    fast = ServerProcess([*model, "--batch-wait-ms", "50", "--max-documents", "50", "--max-body-bytes", str(MAX_BODY),
                          "--max-doc-length", str(MAX_DOC_LENGTH), "--served-model-name", "tiny-lbnl"],
                         logs / "server.log")
    slow = ServerProcess([*model, "--max-queue", "1", "--test-batch-delay-ms", str(DELAY_S * 1000),
                          "--request-timeout", str(TIMEOUT_S), "--api-key", API_KEY], logs / "slow.log")
    with serving(fast, slow):
        yield fast, slow


@pytest.fixture(scope="module")
def server(servers) -> ServerProcess:
    return servers[0]


@pytest.fixture(scope="module")
def slow_server(servers) -> ServerProcess:
    return servers[1]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> Reranker:
    return Reranker.from_pretrained(tiny_checkpoint, device="cpu")


def post(server: ServerProcess, body: Any, path: str = "/v1/rerank", **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kwargs)


def metric(server: ServerProcess, metric_name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


class Background(threading.Thread):
    """An HTTP request in a thread, its response (or error) kept."""

    def __init__(self, send: Callable[[], httpx.Response]):
        super().__init__(daemon=True)
        self.send = send
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.response = self.send()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def result(self, timeout: float = 30.0) -> httpx.Response:
        self.join(timeout)
        assert not self.is_alive(), "request did not finish"
        assert self.error is None, repr(self.error)
        assert self.response is not None
        return self.response


DOCS = ["Green tea catechins reduce inflammation.", {"text": "Coffee prices rose 20% this year."},
        "Green tea improves brain function.", {"text": "Basketball is popular in the US.", "id": "d4"}]


def texts(docs: list[Any]) -> list[str]:
    return [d if isinstance(d, str) else d["text"] for d in docs]


def test_health_models_and_openapi(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "model": "tiny-lbnl", "queue_depth": 0}
    models = httpx.get(server.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-lbnl"] and models["object"] == "list"
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/rerank", "/rerank", "/health", "/v1/models"} <= set(schema["paths"])
    request_schema = schema["components"]["schemas"]["RerankRequest"]
    assert set(request_schema["required"]) == {"query", "documents"}
    assert httpx.get(server.url + "/docs").status_code == 200


def test_rerank_response_shape_and_scores(server: ServerProcess, reference: Reranker) -> None:
    body = {"model": "jina-reranker-v3", "query": "health benefits of green tea", "documents": DOCS, "top_n": 3}
    r = post(server, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"id", "model", "results", "usage", "meta"} and out["model"] == "tiny-lbnl"
    expected = reference.rerank(body["query"], DOCS, top_n=3, max_doc_length=MAX_DOC_LENGTH)
    assert [x["index"] for x in out["results"]] == [e.index for e in expected]
    assert [x["relevance_score"] for x in out["results"]] == pytest.approx([e.relevance_score for e in expected],
                                                                           abs=1e-5)
    assert [x["document"] for x in out["results"]] == [{"text": texts(DOCS)[e.index]} for e in expected]
    q, d = reference.count_tokens(body["query"], DOCS, max_doc_length=MAX_DOC_LENGTH)
    assert out["usage"] == {"total_tokens": q + d, "truncated_documents": 0, "query_truncated": False}
    assert out["meta"] == {"billed_units": {"search_units": 1}}


def test_aliases_return_documents_false_and_empty_list(server: ServerProcess) -> None:
    r = post(server, {"query": "tea", "documents": texts(DOCS), "return_documents": False}, path="/rerank")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4 and all(set(x) == {"index", "relevance_score"} for x in results)
    assert [x["relevance_score"] for x in results] == sorted((x["relevance_score"] for x in results), reverse=True)
    cohere_v2 = post(server, {"model": "rerank-v3.5", "query": "tea", "documents": texts(DOCS), "top_n": 1},
                     path="/v2/rerank")
    assert cohere_v2.status_code == 200 and cohere_v2.json()["results"][0]["index"] == results[0]["index"]
    empty = post(server, {"query": "tea", "documents": []})
    assert empty.status_code == 200 and empty.json()["results"] == [] and empty.json()["usage"]["total_tokens"] == 0


def test_long_inputs_are_truncated_and_reported(server: ServerProcess, reference: Reranker) -> None:
    docs = ["tea " * 200, "short one", "leaves " * 100]
    out = post(server, {"query": "tea", "documents": docs}).json()
    q, d = reference.count_tokens("tea", docs, max_doc_length=MAX_DOC_LENGTH)
    assert out["usage"] == {"total_tokens": q + d, "truncated_documents": 2, "query_truncated": False}
    expected = reference.rerank("tea", docs, max_doc_length=MAX_DOC_LENGTH)
    assert [x["relevance_score"] for x in out["results"]] == pytest.approx([e.relevance_score for e in expected],
                                                                           abs=1e-5)
    assert out["results"][0]["document"]["text"] in docs, "the caller's full text comes back, not the cut one"


@pytest.mark.parametrize(
    "content, field, words",
    [
        ('{"query": "tea", "documents": ["a"', "body", "invalid JSON"),
        ("[1, 2]", "body", "JSON object"),
        ('{"documents": ["a"]}', "query", "required"),
        ('{"query": "   ", "documents": ["a"]}', "query", "must not be empty"),
        ('{"query": 7, "documents": ["a"]}', "query", "string"),
        ('{"query": "tea", "documents": "a"}', "documents", "list"),
        ('{"query": "tea", "documents": ["a", "b", "c", 3]}', "documents.3", "string or an object"),
        ('{"query": "tea", "documents": ["a", {"txt": "b"}]}', "documents.1", "'text'"),
        ('{"query": "tea", "documents": ["a"], "top_n": 0}', "top_n", "greater than or equal to 1"),
        ('{"query": "tea", "documents": ["a"], "top_n": "2"}', "top_n", "integer"),
        ('{"query": "tea", "documents": ["a"], "return_documents": "yes"}', "return_documents", "boolean"),
        ('{"query": "tea", "documents": ' + json.dumps(["d"] * 51) + "}", "documents", "at most 50 documents"),
    ],
)
def test_bad_requests_name_the_field(server: ServerProcess, content: str, field: str, words: str) -> None:
    r = httpx.post(server.url + "/v1/rerank", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in [e["field"] for e in body["errors"]] and words in body["detail"], body
    assert body["detail"].startswith(f"{body['errors'][0]['field']}: ")


def test_form_encoded_body_says_to_send_json(server: ServerProcess) -> None:
    r = httpx.post(server.url + "/v1/rerank", content='{"query": "tea", "documents": ["a"]}',
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["detail"]


def test_body_size_limit_with_and_without_content_length(server: ServerProcess) -> None:
    big = json.dumps({"query": "tea", "documents": ["x" * 10_000] * 25}).encode()
    assert len(big) > MAX_BODY
    r = httpx.post(server.url + "/v1/rerank", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["detail"]

    def chunks():
        for i in range(0, len(big), 16_384):
            yield big[i: i + 16_384]

    r = httpx.post(server.url + "/v1/rerank", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["detail"]
    assert post(server, {"query": "tea", "documents": ["still serving"]}).status_code == 200


def test_concurrent_requests_score_as_if_alone(server: ServerProcess, reference: Reranker) -> None:
    words = "tea coffee leaf brain heart sport market rain river stone".split()
    requests = [
        {"query": f"{words[i]} and {words[(i + 3) % 10]}",
         "documents": [" ".join(words[(i + j + k) % 10] for j in range(k % 5 + 1)) for k in range(2 + i)]}
        for i in range(8)
    ]
    serial = [post(server, body).json()["results"] for body in requests]
    batches_before = metric(server, "lbnl_batch_requests_count")
    barrier = threading.Barrier(len(requests))

    def send(body: dict) -> Callable[[], httpx.Response]:
        return lambda: (barrier.wait(), post(server, body))[1]

    threads = [Background(send(body)) for body in requests]
    concurrent = [t.result().json()["results"] for t in threads]
    batches = metric(server, "lbnl_batch_requests_count") - batches_before
    assert batches < len(requests), "concurrent requests should share batches"
    for body, alone, together in zip(requests, serial, concurrent):
        assert [x["index"] for x in together] == [x["index"] for x in alone]
        assert [x["relevance_score"] for x in together] == pytest.approx([x["relevance_score"] for x in alone],
                                                                         abs=1e-5)
    ref = reference.rerank(requests[-1]["query"], requests[-1]["documents"], max_doc_length=MAX_DOC_LENGTH)
    assert [x["relevance_score"] for x in concurrent[-1]] == pytest.approx([e.relevance_score for e in ref], abs=1e-5)


def test_metrics_count_requests_documents_and_latency(server: ServerProcess) -> None:
    ok = metric(server, "lbnl_http_requests_total", endpoint="/v1/rerank", status="200")
    docs = metric(server, "lbnl_documents_total")
    assert post(server, {"query": "tea", "documents": ["a", "b", "c"]}).status_code == 200
    assert post(server, {"query": "", "documents": ["a"]}).status_code == 422
    assert metric(server, "lbnl_http_requests_total", endpoint="/v1/rerank", status="200") == ok + 1
    assert metric(server, "lbnl_http_requests_total", endpoint="/v1/rerank", status="422") >= 1
    assert metric(server, "lbnl_documents_total") == docs + 3
    assert metric(server, "lbnl_http_request_duration_seconds_count", endpoint="/v1/rerank") >= ok + 2
    assert metric(server, "lbnl_documents_per_second") > 0
    assert metric(server, "lbnl_queue_depth") == 0
    assert metric(server, "lbnl_model_info", name="tiny-lbnl") == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_docs_curl_examples_run(server: ServerProcess) -> None:
    """Every curl example in docs/serve.md runs; those before the Errors section succeed."""
    page = (ROOT / "docs" / "serve.md").read_text()
    ran = 0
    for section, errors_allowed in zip(page.split("## Errors"), (False, True)):
        for block in re.findall(r"```bash\n(.*?)```", section, re.S):
            for command in re.split(r"\n(?=curl )", block.replace("\\\n", " ").strip()):
                done = subprocess.run(["bash", "-c", command.replace("http://localhost:8080", server.url)],
                                      capture_output=True, text=True, timeout=60,
                                      env={"PATH": os.environ["PATH"], "LBNL_API_KEY": API_KEY})
                assert done.returncode == 0, (command, done.stderr)
                ran += 1
                if "/metrics" in command:
                    assert "lbnl_http_requests_total" in done.stdout
                    continue
                out = json.loads(done.stdout)
                assert ("detail" in out) == errors_allowed, (command, out)
    assert ran >= 7


def test_api_key(slow_server: ServerProcess) -> None:
    body = {"query": "tea", "documents": ["a"]}
    for headers in ({}, {"Authorization": f"Bearer {API_KEY}x"}, {"Authorization": API_KEY},
                    {"Authorization": f"Basic {API_KEY}"}):
        r = post(slow_server, body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["detail"]
    assert httpx.get(slow_server.url + "/v1/models").status_code == 401
    assert httpx.get(slow_server.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(slow_server.url + "/health").status_code == 200
    assert httpx.get(slow_server.url + "/metrics").status_code == 200
    r = post(slow_server, {"query": "tea"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401, "the key is checked before the body"


def test_overload_503_and_timeout_504(slow_server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    docs_before = metric(slow_server, "lbnl_documents_total")
    first = Background(lambda: post(slow_server, {"query": "a", "documents": ["x"] * 3}, headers=auth))
    wait_for(lambda: metric(slow_server, "lbnl_running_requests") == 1)
    second = Background(lambda: post(slow_server, {"query": "b", "documents": ["y"] * 5}, headers=auth))
    wait_for(lambda: metric(slow_server, "lbnl_queue_depth") == 1)

    third = post(slow_server, {"query": "c", "documents": ["z"] * 7}, headers=auth)
    assert third.status_code == 503 and int(third.headers["retry-after"]) >= 1
    assert "busy" in third.json()["detail"]

    assert first.result().status_code == 200
    timed_out = second.result()
    assert timed_out.status_code == 504 and f"{TIMEOUT_S:g} s" in timed_out.json()["detail"]
    wait_for(lambda: metric(slow_server, "lbnl_running_requests") == 0)
    assert metric(slow_server, "lbnl_queue_depth") == 0
    assert metric(slow_server, "lbnl_documents_total") == docs_before + 3, "only the answered request counts"
    assert metric(slow_server, "lbnl_http_requests_total", endpoint="/v1/rerank", status="503") == 1
    assert metric(slow_server, "lbnl_http_requests_total", endpoint="/v1/rerank", status="504") == 1


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(slow_server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    wait_for(lambda: metric(slow_server, "lbnl_running_requests") == 0)
    in_flight = Background(lambda: post(slow_server, {"query": "tea", "documents": ["a", "b"]}, headers=auth))
    wait_for(lambda: metric(slow_server, "lbnl_running_requests") == 1)
    slow_server.terminate()

    def refused() -> bool:
        try:
            httpx.get(slow_server.url + "/health", timeout=1.0)
        except httpx.ConnectError:
            return True
        except httpx.TransportError:
            pass  # accepted just before the listener closed, then dropped: try again
        return False

    wait_for(refused, timeout=DELAY_S)
    assert in_flight.is_alive(), "new connections must be refused while the old request is still running"
    r = in_flight.result()
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert slow_server.proc is not None
    code = slow_server.proc.wait(30)
    assert code in (0, -15), slow_server.log()
    log = slow_server.log()
    assert "batcher stopped" in log and "Application shutdown complete" in log and "Traceback" not in log


def test_cli_errors_are_messages() -> None:
    runs = [subprocess.Popen([sys.executable, "-m", "lbnl", "serve", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for args in (["--max-queue", "0"], ["--port", "0", "--model", "no/such-checkpoint-dir"])]
    (_, bad), (_, missing) = (p.communicate(timeout=120) for p in runs)
    assert runs[0].returncode == 2 and "max-queue must be a positive integer" in bad
    assert runs[1].returncode == 2 and "no/such-checkpoint-dir" in missing and "Traceback" not in missing
