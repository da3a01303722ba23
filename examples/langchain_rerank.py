"""LangChain: a keyword retriever whose hits lbnl reranks in process, with the built-in model.

    pip install 'lbnl[langchain]' && python examples/langchain_rerank.py
"""

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from lbnl.integrations.langchain import LBNLRerank

CORPUS = [
    "Green tea contains catechins, antioxidants that may lower the risk of heart disease.",
    "A cohort study linked drinking green tea to lower mortality from cardiovascular disease.",
    "To brew green tea, steep the leaves in water at about 80 degrees for two minutes.",
    "Coffee prices rose sharply this year because of supply problems.",
    "Basketball is one of the most popular sports in the United States.",
]


class KeywordRetriever(BaseRetriever):
    """Documents sharing a word with the query (a stand-in for any first-stage retriever)."""

    documents: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager=None) -> list[Document]:
        words = set(query.lower().split())
        return [d for d in self.documents if words & set(d.page_content.lower().split())]


retriever = KeywordRetriever(documents=[Document(page_content=t, metadata={"id": i}) for i, t in enumerate(CORPUS)])
compressor = LBNLRerank(top_n=2)  # the built-in lbnl-small; LBNLRerank(model="path/or/hub-id") for another
query = "Is green tea good for the heart?"
for doc in compressor.compress_documents(retriever.invoke(query), query):
    print(f"{doc.metadata['relevance_score']:.4f}  [{doc.metadata['id']}] {doc.page_content}")
