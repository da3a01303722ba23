"""LlamaIndex: a query engine whose retrieved nodes lbnl reranks in process, with the built-in model.
No LLM or embedding model is needed: the index is a summary index and the LLM a mock.

    pip install 'lbnl[llamaindex]' && python examples/llamaindex_rerank.py
"""

from llama_index.core import Document, Settings, SummaryIndex
from llama_index.core.llms import MockLLM

from lbnl.integrations.llamaindex import LBNLRerankPostprocessor

CORPUS = [
    "Green tea contains catechins, antioxidants that may lower the risk of heart disease.",
    "A cohort study linked drinking green tea to lower mortality from cardiovascular disease.",
    "To brew green tea, steep the leaves in water at about 80 degrees for two minutes.",
    "Coffee prices rose sharply this year because of supply problems.",
    "Basketball is one of the most popular sports in the United States.",
]

Settings.llm = MockLLM()
index = SummaryIndex.from_documents([Document(text=t) for t in CORPUS])
engine = index.as_query_engine(node_postprocessors=[LBNLRerankPostprocessor(top_n=2)], response_mode="no_text")
response = engine.query("Is green tea good for the heart?")
for node in response.source_nodes:
    print(f"{node.score:.4f}  {node.node.get_content()}")
