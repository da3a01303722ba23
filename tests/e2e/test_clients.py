"""Issue #17: the real third-party rerank clients, unchanged, against a real ``lbnl serve`` on loopback.

Each client is pointed at the server by its own documented base-URL option and nothing else; the
server requires an API key, so each client also has to send it the way it sends a Jina or Cohere key.
Every test checks that the request reached lbnl (the server's own request counter, by endpoint and
status 200, moved by exactly the requests the client made) and that the client returns lbnl's ranking:
the order and scores that the same checkpoint computes in process for the texts the client sent.

The clients come with the ``clients`` extra (``dev`` includes it, so ``make test`` installs them);
docs/serve.md lists the versions tested. The table there names these tests.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbnl import Reranker
from lbnl.testing.server import ServerProcess

pytestmark = pytest.mark.clients

API_KEY = "clients-test-key"
MAX_DOC = 64
QUERY = "What are the health benefits of green tea?"
TEXTS = ["Green tea catechins reduce inflammation.", "Coffee prices rose 20% this year.",
         "Green tea improves brain function and metabolism.", "Basketball is popular in the US.",
         "Black tea and green tea come from the same plant."]
TITLES = ["Tea", "Markets", "Tea", "Sport", "Botany"]
TOP = 3
#: Consecutive expected scores must differ by more than this, so that comparing orders is never a coin toss
#: between two documents whose scores differ by float rounding (batching may move a score by 1e-6).
MIN_GAP = 1e-5


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("clients")
    key_file = logs / "api-key"
    key_file.write_text(API_KEY + "\n")
    s = ServerProcess(["--model", str(tiny_checkpoint), "--device", "cpu", "--max-doc-length", str(MAX_DOC),
                       "--api-key-file", str(key_file)], logs / "server.log")
    s.env.pop("LBNL_API_KEY", None)
    with s:
        yield s


def requests_served(server: ServerProcess, endpoint: str, status: str = "200") -> float:
    """``lbnl_http_requests_total{endpoint, status}`` as the server reports it."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "lbnl_http_requests_total" and sample.labels == {"endpoint": endpoint,
                                                                               "status": status}:
                return sample.value
    return 0.0


@contextmanager
def reaches(server: ServerProcess, endpoint: str, count: int = 1, status: str = "200") -> Iterator[None]:
    """Assert that the block made exactly ``count`` requests to ``endpoint`` that lbnl answered with ``status``."""
    before = requests_served(server, endpoint, status)
    yield
    assert requests_served(server, endpoint, status) - before == count, f"{count} request(s) to {endpoint}"


def lbnl_ranking(reranker: Reranker, query: str, texts: list[str], top: int | None = TOP,
                 max_doc_length: int = MAX_DOC) -> list[tuple[int, float]]:
    """(index, score), best first, as the served checkpoint computes them in process for ``texts``."""
    ranked = [(r.index, r.relevance_score) for r in reranker.rerank(query, texts, max_doc_length=max_doc_length)]
    scores = [s for _, s in ranked]
    assert all(a - b > MIN_GAP for a, b in zip(scores, scores[1:])), f"near-tied test data: {scores}"
    return ranked[:top]


def assert_same(got: list[tuple[Any, float]], want: list[tuple[Any, float]]) -> None:
    assert [k for k, _ in got] == [k for k, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)


# --- LangChain -------------------------------------------------------------------------------------------


def langchain_documents() -> list[Any]:
    from langchain_core.documents import Document

    return [Document(page_content=t, metadata={"source": f"s{i}"}) for i, t in enumerate(TEXTS)]


def test_langchain_cohere_rerank(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """langchain-cohere's ``CohereRerank`` document compressor (``base_url``; it calls Cohere v2)."""
    from langchain_cohere import CohereRerank

    compressor = CohereRerank(model="rerank-v3.5", cohere_api_key=API_KEY, base_url=server.url, top_n=TOP)
    want = lbnl_ranking(tiny_reranker, QUERY, TEXTS)
    with reaches(server, "/v2/rerank"):
        out = compressor.compress_documents(langchain_documents(), QUERY)
    assert_same([(d.metadata["source"], d.metadata["relevance_score"]) for d in out], [(f"s{i}", s) for i, s in want])
    with reaches(server, "/v2/rerank"):
        everything = compressor.rerank(TEXTS, QUERY, top_n=None)
    assert_same([(r["index"], r["relevance_score"]) for r in everything],
                lbnl_ranking(tiny_reranker, QUERY, TEXTS, top=None))


def test_langchain_contextual_compression_retriever(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """``CohereRerank`` as the compressor of a ``ContextualCompressionRetriever`` (langchain-classic)."""
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_cohere import CohereRerank
    from langchain_core.retrievers import BaseRetriever

    class FirstStage(BaseRetriever):
        """Stands in for a vector store: returns every document, in its own order."""

        def _get_relevant_documents(self, query: str, *, run_manager: Any = None) -> list[Any]:
            return langchain_documents()

    retriever = ContextualCompressionRetriever(
        base_compressor=CohereRerank(model="rerank-v3.5", cohere_api_key=API_KEY, base_url=server.url, top_n=TOP),
        base_retriever=FirstStage())
    want = lbnl_ranking(tiny_reranker, QUERY, TEXTS)
    with reaches(server, "/v2/rerank"):
        out = retriever.invoke(QUERY)
    assert_same([(d.page_content, d.metadata["relevance_score"]) for d in out], [(TEXTS[i], s) for i, s in want])
    with reaches(server, "/v2/rerank"):
        out = asyncio.run(retriever.ainvoke(QUERY))
    assert [d.page_content for d in out] == [TEXTS[i] for i, _ in want]


# --- LlamaIndex ------------------------------------------------------------------------------------------


def llamaindex_nodes() -> tuple[list[Any], list[str]]:
    """Nodes with metadata, and the texts LlamaIndex's rerankers send for them (``MetadataMode.EMBED``)."""
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={"title": TITLES[i]}), score=0.0)
             for i, t in enumerate(TEXTS)]
    return nodes, [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]


def test_llamaindex_jina_rerank(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """llama-index-postprocessor-jinaai-rerank's ``JinaRerank`` (``base_url``, to which it adds ``/rerank``)."""
    from llama_index.core.schema import QueryBundle
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    nodes, sent = llamaindex_nodes()
    assert sent[0] != TEXTS[0], "the metadata is part of what the model reads"
    want = lbnl_ranking(tiny_reranker, QUERY, sent)
    reranker = JinaRerank(model="jina-reranker-v3", base_url=server.url + "/v1", api_key=API_KEY, top_n=TOP)
    with reaches(server, "/v1/rerank"):
        out = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert_same([(n.node.node_id, n.score) for n in out], [(f"n{i}", s) for i, s in want])


def test_llamaindex_cohere_rerank(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """llama-index-postprocessor-cohere-rerank's ``CohereRerank`` (``base_url``; it calls Cohere v2)."""
    from llama_index.core.schema import QueryBundle
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    nodes, sent = llamaindex_nodes()
    want = lbnl_ranking(tiny_reranker, QUERY, sent)
    reranker = CohereRerank(model="rerank-v3.5", api_key=API_KEY, base_url=server.url, top_n=TOP, max_retries=1)
    with reaches(server, "/v2/rerank"):
        out = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert_same([(n.node.node_id, n.score) for n in out], [(f"n{i}", s) for i, s in want])


# --- Haystack --------------------------------------------------------------------------------------------


def haystack_documents() -> list[Any]:
    from haystack import Document

    return [Document(content=t, id=f"h{i}", meta={"title": TITLES[i]}) for i, t in enumerate(TEXTS)]


def test_haystack_jina_ranker(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """jina-haystack's ``JinaRanker`` (``base_url``: the full rerank URL), alone, async and in a Pipeline."""
    from haystack import Pipeline
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker

    ranker = JinaRanker(model="jina-reranker-v3", api_key=Secret.from_token(API_KEY), top_k=TOP,
                        base_url=server.url + "/v1/rerank")
    want = [(f"h{i}", s) for i, s in lbnl_ranking(tiny_reranker, QUERY, TEXTS)]
    with reaches(server, "/v1/rerank"):
        out = ranker.run(query=QUERY, documents=haystack_documents())
    assert_same([(d.id, d.score) for d in out["documents"]], want)
    assert out["meta"]["model"] == "ckpt", "the answer names the model lbnl serves"
    with reaches(server, "/v1/rerank"):
        out = asyncio.run(ranker.run_async(query=QUERY, documents=haystack_documents()))
    assert_same([(d.id, d.score) for d in out["documents"]], want)
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    with reaches(server, "/v1/rerank"):
        out = pipeline.run({"ranker": {"query": QUERY, "documents": haystack_documents()}})
    assert_same([(d.id, d.score) for d in out["ranker"]["documents"]], want)


def test_haystack_cohere_ranker(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """cohere-haystack's ``CohereRanker`` (``api_base_url``; Cohere v2 with ``max_tokens_per_doc`` 4096 and
    ``meta_fields_to_embed``), sync and async."""
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.cohere import CohereRanker

    ranker = CohereRanker(model="rerank-v3.5", api_key=Secret.from_token(API_KEY), api_base_url=server.url,
                          top_k=TOP, meta_fields_to_embed=["title"])
    sent = [f"{TITLES[i]}\n{t}" for i, t in enumerate(TEXTS)]
    want = [(f"h{i}", s) for i, s in lbnl_ranking(tiny_reranker, QUERY, sent)]
    with reaches(server, "/v2/rerank"):
        out = ranker.run(query=QUERY, documents=haystack_documents())
    assert_same([(d.id, d.score) for d in out["documents"]], want)
    with reaches(server, "/v2/rerank"):
        out = asyncio.run(ranker.run_async(query=QUERY, documents=haystack_documents()))
    assert_same([(d.id, d.score) for d in out["documents"]], want)


# --- the cohere SDK's sync clients and rerankers' API providers ------------------------------------------


def test_the_real_cohere_sdk(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """``cohere.Client.rerank`` (v1: ``rank_fields``, ``return_documents``) and ``cohere.ClientV2.rerank``
    (v2: ``max_tokens_per_doc``), ``base_url`` the server's."""
    import cohere

    v1 = cohere.Client(api_key=API_KEY, base_url=server.url)
    docs = [{"title": TITLES[i], "text": t} for i, t in enumerate(TEXTS)]
    sent = [f"title: {TITLES[i]}\ntext: {t}" for i, t in enumerate(TEXTS)]
    with reaches(server, "/v1/rerank"):
        out = v1.rerank(model="rerank-english-v3.0", query=QUERY, documents=docs, rank_fields=["title", "text"],
                        top_n=TOP)
    assert_same([(r.index, r.relevance_score) for r in out.results], lbnl_ranking(tiny_reranker, QUERY, sent))
    assert all(r.document is None for r in out.results), "Cohere's default: no documents"
    with reaches(server, "/v1/rerank"):
        out = v1.rerank(model="rerank-english-v3.0", query=QUERY, documents=TEXTS, return_documents=True)
    want = lbnl_ranking(tiny_reranker, QUERY, TEXTS, top=None)
    assert_same([(r.index, r.relevance_score) for r in out.results], want)
    assert [r.document.text for r in out.results] == [TEXTS[i] for i, _ in want]
    v2 = cohere.ClientV2(api_key=API_KEY, base_url=server.url)
    with reaches(server, "/v2/rerank"):
        out = v2.rerank(model="rerank-v3.5", query=QUERY, documents=TEXTS, max_tokens_per_doc=4)
    assert_same([(r.index, r.relevance_score) for r in out.results],
                lbnl_ranking(tiny_reranker, QUERY, TEXTS, top=None, max_doc_length=4))


def test_the_real_rerankers_api_providers(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """rerankers' ``APIRanker`` with its TEI, Jina and Cohere providers (``url``: the full endpoint URL)."""
    from rerankers.models.api_rankers import APIRanker

    want = lbnl_ranking(tiny_reranker, QUERY, TEXTS, top=None)
    for provider, path in (("text-embeddings-inference", "/rerank"), ("jina", "/v1/rerank"), ("cohere", "/v1/rerank")):
        ranker = APIRanker("lbnl", api_key=API_KEY, api_provider=provider, url=server.url + path)
        with reaches(server, path):
            out = ranker.rank(QUERY, TEXTS)
        assert [r.rank for r in out.results] == list(range(1, len(TEXTS) + 1)), provider
        assert_same([(r.document.doc_id, r.score) for r in out.results], want)
        assert [r.document.text for r in out.results] == [TEXTS[i] for i, _ in want]


# --- the cohere SDK's async clients ----------------------------------------------------------------------


def test_cohere_async_client_v1(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """``cohere.AsyncClient.rerank`` (Cohere v1: ``rank_fields``, ``return_documents``)."""
    import cohere

    docs = [{"title": TITLES[i], "text": t} for i, t in enumerate(TEXTS)]
    sent = [f"title: {TITLES[i]}\ntext: {t}" for i, t in enumerate(TEXTS)]

    async def main() -> tuple[Any, Any]:
        client = cohere.AsyncClient(api_key=API_KEY, base_url=server.url)
        fields = await client.rerank(model="rerank-english-v3.0", query=QUERY, documents=docs,
                                     rank_fields=["title", "text"], top_n=TOP)
        plain = await client.rerank(model="rerank-english-v3.0", query=QUERY, documents=TEXTS, top_n=TOP,
                                    return_documents=True)
        return fields, plain

    with reaches(server, "/v1/rerank", count=2):
        fields, plain = asyncio.run(main())
    assert_same([(r.index, r.relevance_score) for r in fields.results], lbnl_ranking(tiny_reranker, QUERY, sent))
    assert all(r.document is None for r in fields.results), "Cohere's default: no documents"
    want = lbnl_ranking(tiny_reranker, QUERY, TEXTS)
    assert_same([(r.index, r.relevance_score) for r in plain.results], want)
    assert [r.document.text for r in plain.results] == [TEXTS[i] for i, _ in want]


def test_cohere_async_client_v2_concurrent(server: ServerProcess, tiny_reranker: Reranker) -> None:
    """``cohere.AsyncClientV2.rerank`` (Cohere v2), several requests in flight at once (batched by the server)."""
    import cohere

    queries = [QUERY, "coffee prices", "basketball in the US", "where does tea come from"]

    async def main() -> list[Any]:
        client = cohere.AsyncClientV2(api_key=API_KEY, base_url=server.url)
        return await asyncio.gather(*(client.rerank(model="rerank-v3.5", query=q, documents=TEXTS, top_n=TOP,
                                                    max_tokens_per_doc=MAX_DOC) for q in queries))

    with reaches(server, "/v2/rerank", count=len(queries)):
        answers = asyncio.run(main())
    for query, answer in zip(queries, answers):
        assert_same([(r.index, r.relevance_score) for r in answer.results], lbnl_ranking(tiny_reranker, query, TEXTS))


# --- the key is checked ----------------------------------------------------------------------------------


def test_a_wrong_key_is_refused(server: ServerProcess) -> None:
    """The clients above pass the key check: with another key the same clients get lbnl's 401."""
    import cohere
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker

    with reaches(server, "/v2/rerank", status="401"), pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=server.url).rerank(model="m", query=QUERY, documents=TEXTS)
    ranker = JinaRanker(api_key=Secret.from_token("wrong"), base_url=server.url + "/v1/rerank")
    with reaches(server, "/v1/rerank", status="401"), pytest.raises(RuntimeError, match="API key"):
        ranker.run(query=QUERY, documents=haystack_documents())
