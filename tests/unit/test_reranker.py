"""The reranker against an independent implementation of the official inference, plus API behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lbnl import CheckpointError, InvalidInputError, Reranker
from lbnl.engine import pack
from lbnl.testing.checkpoints import build_random_checkpoint
from helpers import make_docs


def test_embeddings_and_projector_against_hidden_states(tiny_reranker: Reranker, tiny_checkpoint: Path) -> None:
    """Recompute one block by hand: hidden states at the special tokens, projector, cosine."""
    from lbnl.prompt import build_prompt

    query, docs = "green tea", make_docs(5)
    results = tiny_reranker.rerank(query, docs, return_embeddings=True)
    tok = tiny_reranker.tokenizer
    ids = torch.tensor([tok(build_prompt(query, docs))["input_ids"]])
    with torch.no_grad():
        hidden = tiny_reranker.model.backbone(input_ids=ids).last_hidden_state[0]
    weights = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert weights["projector.0.weight"].shape == (32, 64) and weights["projector.2.weight"].shape == (512, 32)
    project = lambda h: torch.relu(h @ weights["projector.0.weight"].T) @ weights["projector.2.weight"].T  # noqa: E731
    doc_pos = (ids[0] == 151670).nonzero().flatten()
    query_pos = (ids[0] == 151671).nonzero().flatten()
    assert len(doc_pos) == 5 and len(query_pos) == 1
    d, q = project(hidden[doc_pos]), project(hidden[query_pos])
    expected = torch.nn.functional.cosine_similarity(d, q, dim=-1)
    for r in results:
        assert r.embedding is not None and r.embedding.shape == (512,) and r.embedding.dtype == np.float32
        np.testing.assert_allclose(r.embedding, d[r.index].numpy(), atol=1e-5)
        assert r.relevance_score == pytest.approx(float(expected[r.index]), abs=1e-5)
    assert [r.relevance_score for r in results] == sorted((r.relevance_score for r in results), reverse=True)


def test_rerank_many_equals_one_at_a_time_and_padding_invariance(tiny_checkpoint: Path) -> None:
    reranker = Reranker.from_pretrained(tiny_checkpoint, max_batch_tokens=10**6)
    queries = ["tea", "coffee market prices", "sport"]
    lists = [make_docs(3, seed=4, lo=40, hi=60), make_docs(7, seed=5, lo=1, hi=3), make_docs(130, seed=6, lo=1, hi=4)]
    batched = reranker.rerank_many(queries, lists)
    blocks = [b for q, d in zip(queries, lists) for b in reranker._plan(q, d, 512, 2048, None).blocks]
    assert len(pack(blocks, reranker.max_batch_tokens)) == 1
    for q, docs, got in zip(queries, lists, batched):
        alone = reranker.rerank(q, docs)
        assert [r.index for r in got] == [r.index for r in alone]
        np.testing.assert_allclose([r.relevance_score for r in got], [r.relevance_score for r in alone], atol=1e-5)


def test_one_prompt_per_forward_scores_as_alone_bit_for_bit(tiny_checkpoint: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``max_batch_tokens=1``: every prompt runs in a forward of its own, so batching changes no bit of any score,
    in bf16 too (where a batched forward's matrix kernels may round otherwise, docs/results.md)."""
    reranker = Reranker.from_pretrained(tiny_checkpoint, dtype="bfloat16", max_batch_tokens=1)
    queries = ["tea", "coffee market prices", "sport"]
    lists = [make_docs(3, seed=4, lo=40, hi=60), make_docs(7, seed=5, lo=1, hi=3), make_docs(130, seed=6, lo=1, hi=4)]
    forwards: list[int] = []
    encode = reranker.model.encode

    def counting(rows: list, *args: object, **kwargs: object) -> tuple:
        forwards.append(len(rows))
        return encode(rows, *args, **kwargs)

    monkeypatch.setattr(reranker.model, "encode", counting)
    batched = reranker.rerank_many(queries, lists)
    blocks = [b for q, d in zip(queries, lists) for b in reranker._plan(q, d, 512, 2048, None).blocks]
    assert forwards == [1] * len(blocks) and len(blocks) == 4  # the 130 documents make two blocks
    for q, docs, got in zip(queries, lists, batched):
        alone = reranker.rerank(q, docs)
        assert [(r.index, r.relevance_score) for r in got] == [(r.index, r.relevance_score) for r in alone]


def test_top_n_documents_and_empty(tiny_reranker: Reranker) -> None:
    docs = [{"text": "green tea", "id": "a"}, "coffee", {"text": "tea <|embed_token|> leaves"}]
    results = tiny_reranker.rerank("tea", docs, top_n=2)
    assert len(results) == 2 and all(r.embedding is None for r in results)
    assert all(r.document is docs[r.index] for r in results)
    assert tiny_reranker.rerank("tea", []) == []
    assert len(tiny_reranker.rerank("tea", docs, top_n=10)) == 3


def test_candidate_bm25_fusion(tiny_reranker: Reranker) -> None:
    from lbnl.checkpoints import Fusion
    from lbnl.fusion import FusedReranker, fuse_scores
    from lbnl.ir.bm25 import candidate_bm25

    query = "green tea and the heart"
    docs = ["Green tea catechins and heart disease.", "Coffee prices rose.", "Tea, the heart and green leaves.",
            "Basketball in the US.", "the and of"]
    bm25 = candidate_bm25(query, docs)
    assert bm25[1] == bm25[3] == bm25[4] == 0.0 and min(bm25[0], bm25[2]) > 0
    assert candidate_bm25("the of", docs) == [0.0] * 5 and candidate_bm25("tea", ["", "of"]) == [0.0, 0.0]
    model = {r.index: r.relevance_score for r in tiny_reranker.rerank(query, docs)}
    for w in (0.0, 0.3, 1.0):
        fused = FusedReranker(tiny_reranker, w).rerank(query, docs)
        expected = fuse_scores(Fusion(w), query, docs, [model[i] for i in range(len(docs))])
        assert [r.relevance_score for r in fused] == pytest.approx(sorted(expected, reverse=True), abs=1e-6)
        assert [expected[r.index] for r in fused] == pytest.approx([r.relevance_score for r in fused], abs=1e-6)
    lexical = FusedReranker(tiny_reranker, 0.0).rerank(query, docs, top_n=2)
    assert {r.index for r in lexical} == {0, 2}
    with pytest.raises(CheckpointError, match="fusion weight must be a number in"):
        FusedReranker(tiny_reranker, 1.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(query="", documents=["a"]), "query is empty"),
        (dict(query="   ", documents=["a"]), "query is empty"),
        (dict(query=3, documents=["a"]), "query must be a string"),
        (dict(query="q", documents=["a", 7]), "document 1"),
        (dict(query="q", documents=[{"title": "x"}]), "document 0"),
        (dict(query="q", documents="just a string"), "list of strings"),
        (dict(query="q", documents=["a"], top_n=0), "top_n"),
        (dict(query="q", documents=["a"], top_n=-2), "top_n"),
        (dict(query="q", documents=["a"], top_n=True), "top_n"),
        (dict(query="q", documents=["a"], max_doc_length=0), "max_doc_length"),
    ],
)
def test_bad_input_is_rejected_with_a_message(tiny_reranker: Reranker, kwargs, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        tiny_reranker.rerank(**kwargs)


def test_save_load_round_trip(tiny_reranker: Reranker, tmp_path: Path) -> None:
    docs = make_docs(6, seed=7)
    tiny_reranker.save_pretrained(tmp_path / "copy")
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["architectures"] == ["JinaForRanking"] and config["model_type"] == "qwen3"
    with safe_open(str(tmp_path / "copy" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"projector.0.weight", "projector.2.weight", "model.embed_tokens.weight", "model.norm.weight"} <= keys
    assert not any(k.startswith("lm_head") for k in keys)
    assert "lbnl" not in config, "the spec's reading settings need no record"
    again = Reranker.from_pretrained(tmp_path / "copy")
    a, b = tiny_reranker.rerank("tea", docs), again.rerank("tea", docs)
    assert [(r.index, r.relevance_score) for r in a] == [(r.index, r.relevance_score) for r in b]
    fast = Reranker.from_pretrained(tmp_path / "copy", preset="fast")
    fast.save_pretrained(tmp_path / "fast")
    assert json.loads((tmp_path / "fast" / "config.json").read_text())["lbnl"] == {"block_size": 16}
    reloaded = Reranker.from_pretrained(tmp_path / "fast")
    assert reloaded.block_size == 16 and Reranker.from_pretrained(tmp_path / "fast", preset="default").block_size == 125


def test_lm_head_is_ignored_and_untied_config_loads(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "untied"
    shutil.copytree(tiny_checkpoint, path)
    weights = load_file(str(path / "model.safetensors"))
    weights["lm_head.weight"] = torch.randn_like(weights["model.embed_tokens.weight"])
    save_file(weights, str(path / "model.safetensors"))
    config = json.loads((path / "config.json").read_text())
    config.update(tie_word_embeddings=False, auto_map={"AutoModel": "modeling.JinaForRanking"})
    (path / "config.json").write_text(json.dumps(config))
    docs = make_docs(4, seed=8)
    base = Reranker.from_pretrained(tiny_checkpoint).rerank("tea", docs)
    other = Reranker.from_pretrained(path).rerank("tea", docs)
    np.testing.assert_allclose([r.relevance_score for r in base], [r.relevance_score for r in other], atol=1e-6)


def test_other_backbone_llama(tmp_path: Path, qwen3_tokenizer_dir: Path) -> None:
    path = build_random_checkpoint(
        tmp_path / "llama", tokenizer_dir=qwen3_tokenizer_dir, model_type="llama", hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    reranker = Reranker.from_pretrained(path)
    assert type(reranker.model.backbone).__name__ == "LlamaModel"
    results = reranker.rerank("tea", make_docs(3), return_embeddings=True)
    assert len(results) == 3 and results[0].embedding.shape == (512,)


def test_missing_projector_or_tokens_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    no_proj = tmp_path / "no_projector"
    shutil.copytree(tiny_checkpoint, no_proj)
    weights = load_file(str(no_proj / "model.safetensors"))
    del weights["projector.2.weight"]
    save_file(weights, str(no_proj / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"projector\.2\.weight"):
        Reranker.from_pretrained(no_proj)

    no_tokens = tmp_path / "no_tokens"
    shutil.copytree(tiny_checkpoint, no_tokens)
    for name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        path = no_tokens / name
        path.write_text(path.read_text().replace("<|rerank_token|>", "<|other_token|>"))
    with pytest.raises(CheckpointError, match=r"<\|rerank_token\|>"):
        Reranker.from_pretrained(no_tokens)

    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        Reranker.from_pretrained(tmp_path / "does-not-exist")


def test_dtype_choice(tiny_checkpoint: Path) -> None:
    from lbnl.hardware import resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype("bf16", torch.float32, cpu) == torch.bfloat16
    assert resolve_dtype(None, torch.float16, cpu) == torch.float32
    assert resolve_dtype(None, "float32", cpu) == torch.float32
    with pytest.raises(CheckpointError, match="unknown dtype"):
        resolve_dtype("int3", None, cpu)
    assert Reranker.from_pretrained(tiny_checkpoint, dtype="float32").model.dtype == torch.float32


def test_symmetric_reading_averages_both_orders(tiny_checkpoint: Path) -> None:
    docs = make_docs(5)
    plain = Reranker.from_pretrained(tiny_checkpoint, device="cpu", fusion=None)
    both = Reranker.from_pretrained(tiny_checkpoint, device="cpu", fusion=None, symmetric=True)
    forward = plain.score_lists(["green tea"], [docs])[0].scores
    backward = plain.score_lists(["green tea"], [docs[::-1]])[0].scores[::-1]
    assert max(abs(a - b) for a, b in zip(forward, backward)) > 1e-4       # the order does move scores
    got = both.score_lists(["green tea", "coffee"], [docs, docs[:2]])
    assert got[0].scores == pytest.approx([(a + b) / 2 for a, b in zip(forward, backward)], abs=1e-5)
    pair = both.score_lists(["coffee"], [docs[1::-1]])[0].scores[::-1]
    assert pair == pytest.approx(got[1].scores, abs=1e-5)                  # two documents: either order, same scores
