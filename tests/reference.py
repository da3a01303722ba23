"""An independent re-implementation of the official jina-reranker-v3 inference, for comparisons.

It mirrors the official remote code path: a ``Qwen3ForCausalLM``-style forward with
``output_hidden_states=True`` over one left-padded prompt per block, embeddings read from the
last hidden state, the projector applied with plain matrix products, and the block-weighted
merge of spec section 4. It shares no code with ``lbnl`` beyond reading the same files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

SYSTEM = (
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant "
    "they are to the query. If the query is a question, how relevant a passage is depends on how well it "
    "answers the question. If not, try to analyze the intent of the query and assess how well each passage "
    "satisfies the intent. If an instruction is provided, you should follow the instruction when determining "
    "the ranking."
)


def _clean(text: str) -> str:
    for token in ("<|embed_token|>", "<|rerank_token|>"):
        text = text.replace(token, "")
    return text


def format_prompt(query: str, docs: list[str], instruction: str | None = None) -> str:
    query, docs = _clean(query), [_clean(d) for d in docs]
    body = (f"I will provide you with {len(docs)} passages, each indicated by a numerical identifier. "
            f"Rank the passages based on their relevance to query: {query}\n")
    if instruction:
        body += f"<instruct>\n{_clean(instruction)}\n</instruct>\n"
    body += "\n".join(f'<passage id="{i}">\n{d}<|embed_token|>\n</passage>' for i, d in enumerate(docs)) + "\n"
    body += f"<query>\n{query}<|rerank_token|>\n</query>"
    return ("<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n" + body
            + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


class OfficialStyleReranker:
    """The official algorithm, step by step, on a causal-LM load of the checkpoint."""

    def __init__(self, path: Path, dtype: torch.dtype = torch.float32):
        self.tokenizer = AutoTokenizer.from_pretrained(path, fix_mistral_regex=False)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).eval()
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            self.w0 = f.get_tensor("projector.0.weight").to(dtype)
            self.w2 = f.get_tensor("projector.2.weight").to(dtype)
        self.doc_id = self.tokenizer.convert_tokens_to_ids("<|embed_token|>")
        self.query_id = self.tokenizer.convert_tokens_to_ids("<|rerank_token|>")

    def _project(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h @ self.w0.T) @ self.w2.T

    @torch.no_grad()
    def block(self, query: str, docs: list[str], instruction: str | None = None):
        batch = self.tokenizer([format_prompt(query, docs, instruction)], padding=True, padding_side="left",
                               return_tensors="pt")
        out = self.model(**batch, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1][0]
        ids = batch["input_ids"][0]
        docs_e = self._project(hidden[ids == self.doc_id])
        query_e = self._project(hidden[ids == self.query_id])
        scores = torch.nn.functional.cosine_similarity(docs_e, query_e.expand_as(docs_e), dim=-1)
        return scores, docs_e, query_e[0]

    def _truncate(self, text: str, cap: int) -> tuple[str, int]:
        ids = self.tokenizer(text, truncation=True, max_length=cap, add_special_tokens=False)["input_ids"]
        if len(ids) == cap:
            text = self.tokenizer.decode(ids)
        return text, len(ids)

    def rerank(self, query: str, docs: list[str], max_query_length: int = 512, max_doc_length: int = 2048,
               instruction: str | None = None) -> list[float]:
        """Scores in input order."""
        query, q_len = self._truncate(query, max_query_length)
        cut = [self._truncate(d, max_doc_length) for d in docs]
        full = self.tokenizer.model_max_length - 2 * q_len
        capacity, current, blocks = full, [], []
        for text, length in cut:
            current.append(text)
            capacity -= length
            if len(current) >= 125 or capacity <= max_doc_length:
                blocks.append(self.block(query, current, instruction))
                current, capacity = [], full
        if current:
            blocks.append(self.block(query, current, instruction))
        weights = torch.stack([((1 + s) / 2).max() for s, _, _ in blocks]).float()
        queries = torch.stack([q.float() for _, _, q in blocks])
        merged = (queries * weights[:, None]).sum(0) / weights.sum()
        doc_embs = torch.cat([d.float() for _, d, _ in blocks])
        return torch.nn.functional.cosine_similarity(doc_embs, merged.expand_as(doc_embs), dim=-1).tolist()
