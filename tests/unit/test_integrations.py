"""The framework integrations against the real packages: text read the framework's way, metadata kept,
scores and order exactly the reranker's."""

from __future__ import annotations

import pytest

QUERY = "green tea and the heart"
TEXTS = ["Green tea catechins and heart disease.", "Coffee prices rose.", "Tea, the heart and green leaves.",
         "Basketball in the US."]


def expected(reranker, top: int) -> list[tuple[int, float]]:
    return [(r.index, r.relevance_score) for r in reranker.rerank(QUERY, TEXTS, top_n=top)]


def test_langchain_document_compressor(tiny_reranker) -> None:
    from langchain_core.documents import Document

    from lbnl.integrations.langchain import LBNLRerank

    docs = [Document(page_content=t, metadata={"source": f"s{i}"}, id=f"d{i}") for i, t in enumerate(TEXTS)]
    out = LBNLRerank(reranker=tiny_reranker, top_n=2).compress_documents(docs, QUERY)
    want = expected(tiny_reranker, 2)
    assert [(d.metadata["source"], d.id) for d in out] == [(f"s{i}", f"d{i}") for i, _ in want]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([s for _, s in want], abs=1e-6)
    assert "relevance_score" not in docs[0].metadata, "the caller's documents are not modified"


def test_llamaindex_node_postprocessor(tiny_reranker) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from lbnl.integrations.llamaindex import LBNLRerankPostprocessor

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.0) for i, t in enumerate(TEXTS)]
    out = LBNLRerankPostprocessor(reranker=tiny_reranker, top_n=3).postprocess_nodes(
        nodes, query_bundle=QueryBundle(QUERY))
    want = expected(tiny_reranker, 3)
    assert [n.node.node_id for n in out] == [f"n{i}" for i, _ in want]
    assert [n.score for n in out] == pytest.approx([s for _, s in want], abs=1e-6)


def test_haystack_ranker_component(tiny_reranker) -> None:
    from haystack import Document, Pipeline

    from lbnl.integrations.haystack import LBNLRanker

    docs = [Document(content=t, meta={"n": i}) for i, t in enumerate(TEXTS)]
    pipeline = Pipeline()
    pipeline.add_component("ranker", LBNLRanker(reranker=tiny_reranker, top_k=4))
    out = pipeline.run({"ranker": {"query": QUERY, "documents": docs, "top_k": 2}})["ranker"]["documents"]
    want = expected(tiny_reranker, 2)
    assert [d.meta["n"] for d in out] == [i for i, _ in want]
    assert [d.score for d in out] == pytest.approx([s for _, s in want], abs=1e-6)
    assert LBNLRanker.from_dict(LBNLRanker(model="lbnl-small", top_k=5).to_dict()).top_k == 5
