"""Haystack 2: a BM25 retrieval pipeline with an lbnl ranker, in process, with the built-in model.

    pip install 'lbnl[haystack]' && python examples/haystack_rerank.py
"""

from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from lbnl.integrations.haystack import LBNLRanker

CORPUS = [
    "Green tea contains catechins, antioxidants that may lower the risk of heart disease.",
    "A cohort study linked drinking green tea to lower mortality from cardiovascular disease.",
    "To brew green tea, steep the leaves in water at about 80 degrees for two minutes.",
    "Coffee prices rose sharply this year because of supply problems.",
    "Basketball is one of the most popular sports in the United States.",
]

store = InMemoryDocumentStore()
store.write_documents([Document(content=t) for t in CORPUS])
pipeline = Pipeline()
pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=5))
pipeline.add_component("ranker", LBNLRanker(top_k=2))  # the built-in lbnl-small
pipeline.connect("retriever.documents", "ranker.documents")
query = "Is green tea good for the heart?"
result = pipeline.run({"retriever": {"query": query}, "ranker": {"query": query}})
for doc in result["ranker"]["documents"]:
    print(f"{doc.score:.4f}  {doc.content}")
