"""The fast path against tests/reference.py (the official code path), across backbone families."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lbnl import Reranker
from lbnl.engine import fast_path_supported
from lbnl.testing.checkpoints import build_random_checkpoint
from helpers import SMALL, in_input_order, make_docs
from reference import OfficialStyleReranker


def test_default_scores_match_the_official_style_reference(family_checkpoint: Path) -> None:
    """Several blocks, several queries in one batch, shared prompt heads: still the official scores."""
    reranker = Reranker.from_pretrained(family_checkpoint, device="cpu", block_size=4)
    states = []
    real_state = reranker.model.prefix_state
    reranker.model.prefix_state = lambda ids, base=None: states.append(len(ids)) or real_state(ids, base)
    plain = Reranker.from_pretrained(family_checkpoint, device="cpu", block_size=4, fast_forward=False)
    reference = OfficialStyleReranker(family_checkpoint)
    queries = ["green tea benefits", "coffee market price"]
    docs = [make_docs(9, seed=3), make_docs(6, seed=4)]
    ours = [in_input_order(r) for r in reranker.rerank_many(queries, docs)]
    hf = [in_input_order(r) for r in plain.rerank_many(queries, docs)]
    for mine, theirs in zip(ours, hf):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    alone = in_input_order(Reranker.from_pretrained(family_checkpoint, device="cpu").rerank(queries[0], docs[0]))
    np.testing.assert_allclose(alone, reference.rerank(queries[0], docs[0]), atol=1e-4)
    assert len(states) >= 2, "shared prompt heads were not computed and reused (the system prompt, then longer heads)"


def test_more_than_125_documents_with_prefix_reuse(tiny_reranker: Reranker, tiny_checkpoint: Path) -> None:
    docs = make_docs(130, seed=5, lo=2, hi=6)
    ours = in_input_order(tiny_reranker.rerank("tea", docs))
    np.testing.assert_allclose(ours, OfficialStyleReranker(tiny_checkpoint).rerank("tea", docs), atol=1e-4)


def test_unsupported_backbones_fall_back_to_the_plain_forward(tmp_path: Path, qwen3_tokenizer_dir: Path) -> None:
    path = build_random_checkpoint(tmp_path / "mistral", tokenizer_dir=qwen3_tokenizer_dir, model_type="mistral",
                                   sliding_window=4096, **SMALL)
    reranker = Reranker.from_pretrained(path, device="cpu")
    assert not fast_path_supported(reranker.model.backbone) and not reranker.model.fast_path
    docs = make_docs(5, seed=8)
    np.testing.assert_allclose(in_input_order(reranker.rerank("tea", docs)),
                               OfficialStyleReranker(path).rerank("tea", docs), atol=1e-4)
