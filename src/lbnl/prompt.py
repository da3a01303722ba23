"""The LBNL prompt: template, sanitising and block planning (truncation is :mod:`lbnl.truncation`).

Pure text and token-id logic with no torch import, so it is testable on its own and shared by
inference and training. Everything here follows docs/spec.md (prompt, truncation, blocks).
"""

from __future__ import annotations

from typing import Sequence

from .defaults import DEFAULT_BLOCK_SIZE, EMBED_TOKEN, RERANK_TOKEN, SPECIAL_TOKENS
from .truncation import truncate, truncate_many

__all__ = ["DEFAULT_BLOCK_SIZE", "EMBED_TOKEN", "RERANK_TOKEN", "SPECIAL_TOKENS", "build_prompt", "plan_blocks",
           "prompt_head", "sanitize", "truncate", "truncate_many"]

SYSTEM_PROMPT = (
    "You are a search relevance expert who can determine a ranking of the passages based on how "
    "relevant they are to the query. If the query is a question, how relevant a passage is depends "
    "on how well it answers the question. If not, try to analyze the intent of the query and assess "
    "how well each passage satisfies the intent. If an instruction is provided, you should follow "
    "the instruction when determining the ranking."
)
PREFIX = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def sanitize(text: str) -> str:
    """Delete the embed and rerank token strings from user text.

    Deletion repeats until none is left, so a string such as ``<|embed<|embed_token|>_token|>``
    cannot reassemble a token and forge an embedding position.
    """
    previous = None
    while previous != text:
        previous = text
        for token in SPECIAL_TOKENS:
            text = text.replace(token, "")
    return text


def build_prompt(
    query: str,
    documents: Sequence[str],
    instruction: str | None = None,
    *,
    early_query_token: bool = False,
) -> str:
    """Return the one prompt that scores ``documents`` against ``query``.

    ``early_query_token`` adds a rerank token right after the first mention of the query; it
    exists for the dual-matching training objective and is never used at inference.
    """
    head = prompt_head(query, len(documents), instruction, early_query_token=early_query_token)
    passages = [
        f'<passage id="{i}">\n{sanitize(doc)}{EMBED_TOKEN}\n</passage>' for i, doc in enumerate(documents)
    ]
    return "".join([head, "\n".join(passages), "\n", f"<query>\n{sanitize(query)}{RERANK_TOKEN}\n</query>", SUFFIX])


def prompt_head(query: str, count: int, instruction: str | None = None, *, early_query_token: bool = False) -> str:
    """The start of the prompt, before the first passage: system prompt, request line, instruction.

    Every block of one query with the same number of passages starts with it, so inference can
    compute it once and reuse it.
    """
    request = (
        f"I will provide you with {count} passages, each indicated by a numerical identifier. "
        f"Rank the passages based on their relevance to query: {sanitize(query)}"
    )
    if early_query_token:
        request += RERANK_TOKEN
    parts = [PREFIX, request, "\n"]
    if instruction:
        parts.append(f"<instruct>\n{sanitize(instruction)}\n</instruct>\n")
    return "".join(parts)


def plan_blocks(
    doc_lengths: Sequence[int],
    query_length: int,
    model_max_length: int,
    max_doc_length: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[list[int]]:
    """Split documents, in input order, into prompts (spec section 4, step 2).

    A block closes when it holds ``block_size`` documents or when the remaining token capacity
    (``model_max_length - 2 * query_length`` minus the documents taken so far) is at most
    ``max_doc_length``.
    """
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    full = model_max_length - 2 * query_length
    blocks: list[list[int]] = []
    current: list[int] = []
    capacity = full
    for i, length in enumerate(doc_lengths):
        current.append(i)
        capacity -= length
        if len(current) >= block_size or capacity <= max_doc_length:
            blocks.append(current)
            current = []
            capacity = full
    if current:
        blocks.append(current)
    return blocks
