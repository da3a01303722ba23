"""The official inference path, re-implemented: the baseline every other path is compared with.

``AutoModelForCausalLM`` forward with ``output_hidden_states=True, use_cache=False`` over one
left-padded prompt per block of 125 documents, the last hidden state read at the special tokens,
the projector, the block-weighted merge. It is kept apart from lbnl's own code on purpose, so a
bug in lbnl's fast path cannot also hide in its reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

class ReferenceScorer:
    """The official remote code's inference, re-implemented: causal-LM forward with every hidden state."""

    def __init__(self, path: Path, dtype: Any):
        import torch
        from safetensors import safe_open
        from transformers import AutoModelForCausalLM

        from ..checkpoints.files import load_tokenizer, quiet_transformers, safetensors_files

        self.torch = torch
        self.tokenizer = load_tokenizer(path)
        with quiet_transformers():
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).eval()
        weights = {}
        for file in safetensors_files(path):
            with safe_open(str(file), framework="pt") as f:
                weights.update({k: f.get_tensor(k) for k in f.keys() if k.startswith("projector.")})
        self.w0 = weights["projector.0.weight"].to(dtype)
        self.w2 = weights["projector.2.weight"].to(dtype)
        self.doc_id = self.tokenizer.convert_tokens_to_ids("<|embed_token|>")
        self.query_id = self.tokenizer.convert_tokens_to_ids("<|rerank_token|>")
        self.captured: dict[tuple[int, ...], Any] = {}
        self.description = ""

    def hidden(self, ids: list[int], read: list[int]) -> Any:
        """The last hidden state at ``read`` of the official forward (causal LM, every hidden state) over ``ids``."""
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True, use_cache=False)
        return out.hidden_states[-1][0, list(read)].float()

    def _block(self, query: str, docs: list[str]) -> tuple[Any, Any, Any]:
        from ..prompt import build_prompt

        torch = self.torch
        batch = self.tokenizer([build_prompt(query, docs)], padding=True, padding_side="left", return_tensors="pt")
        out = self.model(**batch, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1][0]
        ids = batch["input_ids"][0]
        project = lambda h: torch.relu(h @ self.w0.T) @ self.w2.T  # noqa: E731
        docs_e, query_e = project(hidden[ids == self.doc_id]), project(hidden[ids == self.query_id])
        scores = torch.nn.functional.cosine_similarity(docs_e, query_e.expand_as(docs_e), dim=-1)
        return scores, docs_e, query_e[0]

    def score(self, queries: list[str], documents: list[list[str]], max_doc_length: int) -> list[list[float]]:
        from ..prompt import plan_blocks, truncate, truncate_many

        torch = self.torch
        results = []
        with torch.no_grad():
            for query, docs in zip(queries, documents):
                query_text, q_len = truncate(query, self.tokenizer, 512)
                texts, counts = truncate_many(docs, self.tokenizer, max_doc_length)
                groups = plan_blocks(counts, q_len, self.tokenizer.model_max_length, max_doc_length, 125)
                blocks = [self._block(query_text, [texts[i] for i in g]) for g in groups]
                weights = torch.stack([((1 + s) / 2).max() for s, _, _ in blocks]).float()
                merged = (torch.stack([q.float() for _, _, q in blocks]) * weights[:, None]).sum(0) / weights.sum()
                doc_embs = torch.cat([d.float() for _, d, _ in blocks])
                order = [i for g in groups for i in g]
                cos = torch.nn.functional.cosine_similarity(doc_embs, merged.expand_as(doc_embs), dim=-1).tolist()
                aligned = [0.0] * len(docs)
                for i, s in zip(order, cos):
                    aligned[i] = s
                results.append(aligned)
        return results
