"""The specification's constants and lbnl's defaults, in one place (docs/spec.md).

Imports nothing: every layer of lbnl may read these.
"""

from __future__ import annotations

#: The token after each document whose final hidden state is the document's embedding.
EMBED_TOKEN = "<|embed_token|>"
#: The token after the closing query whose final hidden state is the query's embedding.
RERANK_TOKEN = "<|rerank_token|>"
SPECIAL_TOKENS = (EMBED_TOKEN, RERANK_TOKEN)

#: Documents per prompt of the official checkpoint.
DEFAULT_BLOCK_SIZE = 125
#: Tokens kept of the query.
MAX_QUERY_LENGTH = 512
#: Tokens kept of each document.
MAX_DOC_LENGTH = 2048
#: Padded tokens per forward when several prompts are batched; larger batches gain little on a CPU.
MAX_BATCH_TOKENS = 16384
#: A prompt's token capacity when the tokenizer states none (Qwen3's context).
MODEL_MAX_LENGTH = 131072
#: Width of the projected embeddings.
PROJECTOR_DIM = 512

#: Rows per chunk of ``rerank-batch``: one rerank call and one committed part.
BATCH_ROWS = 64
#: Port of ``lbnl serve``.
SERVE_PORT = 8080

#: Name of the built-in default model (a shipped adapter; ``lbnl-small`` and ``lbnl-small-v2`` stay
#: available by name).
DEFAULT_MODEL_NAME = "lbnl-small-v3"
#: Hub id of the official checkpoint.
OFFICIAL_HUB_ID = "jinaai/jina-reranker-v3"
