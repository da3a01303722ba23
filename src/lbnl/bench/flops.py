"""The FLOP model: what a plain decoder forward over the bench's prompts costs.

Model FLOPs of a prompt of T tokens (the work a plain decoder forward needs; no LM head):
``layers * (2 * P * T + 2 * H * d * T * (T + 1))``, where P is the matmul parameters of one layer
(``2*h*H*d + 2*h*K*d + 3*h*i``: q/o, k/v, the gated MLP), H query heads of size d, K key/value
heads, and the attention term counts QK^T and AV over the T(T+1)/2 causal pairs. Every path is
charged the model FLOPs of the prompts it builds, whatever it skips, so the fraction of peak is
comparable across paths (the reference additionally runs an LM head that is not counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

@dataclass(frozen=True)
class DecoderShape:
    """What the FLOP count needs from a decoder config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> "DecoderShape":
        from ..model import config_head_dim  # torch: not at import (the CLI's help stays light)

        heads = config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size, heads,
                   getattr(config, "num_key_value_heads", None) or heads, config_head_dim(config), config.vocab_size)

    @property
    def layer_params(self) -> int:
        h, d = self.hidden, self.head_dim
        return 2 * h * self.heads * d + 2 * h * self.kv_heads * d + 3 * h * self.intermediate

    def flops(self, length: int) -> float:
        """Model FLOPs of one causal forward over ``length`` tokens (module docstring)."""
        t = length
        return self.layers * (2.0 * self.layer_params * t + 2.0 * self.heads * self.head_dim * t * (t + 1))


def prompt_lengths(tokenizer: Any, query: str, documents: Sequence[str], block_size: int, max_doc_length: int,
                   max_query_length: int = 512) -> list[int]:
    """Token lengths of the prompts the spec's block planning builds for one query."""
    from ..prompt import build_prompt, plan_blocks, truncate, truncate_many

    query_text, q_len = truncate(query, tokenizer, max_query_length)
    texts, counts = truncate_many(list(documents), tokenizer, max_doc_length)
    limit = getattr(tokenizer, "model_max_length", 131072)
    limit = int(limit) if limit and limit < 10**9 else 131072
    groups = plan_blocks(counts, q_len, limit, max_doc_length, block_size)
    prompts = [build_prompt(query_text, [texts[i] for i in g]) for g in groups]
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
