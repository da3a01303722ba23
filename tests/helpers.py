"""Helpers shared by the test modules: random documents over a small vocabulary, scores in input order."""

from __future__ import annotations

import random

WORDS = ("tea green catechin heart brain coffee price sport basket metabolism cell study risk weight "
         "antioxidant supply chain market league score").split()
#: A small config for non-Qwen3 families (Qwen3's tiny defaults come from lbnl.testing.checkpoints).
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096)


def make_docs(n: int, seed: int = 0, lo: int = 3, hi: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def in_input_order(results) -> list[float]:
    """The relevance scores of ranked results, put back in input order."""
    out = [0.0] * len(results)
    for r in results:
        out[r.index] = r.relevance_score
    return out


scores_in_input_order = in_input_order
