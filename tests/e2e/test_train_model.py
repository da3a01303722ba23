"""The model being trained: plain causal LM -> LBNL, LoRA with trainable special-token rows, the adapter form."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lbnl import CheckpointError, Fusion, FusedReranker, Reranker
from lbnl.checkpoints import load_checkpoint, save_official
from lbnl.checkpoints.adapter import ADAPTER_FILE, is_adapter_dir, read_adapter_config, register_base_resolver
from lbnl.prompt import EMBED_TOKEN, RERANK_TOKEN
from lbnl.train.modeling import TrainableLBNL, init_lbnl_from_causal_lm, load_base

QUERY = "green tea health benefits"
DOCS = ["Green tea catechins reduce inflammation.", "Coffee prices rose by twenty percent.",
        "Basketball is popular in the United States.", "Tea antioxidants may help brain function."]
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def plain_tokenizer(qwen3_tokenizer_dir: Path, out: Path):
    """The real Qwen3 tokenizer without the LBNL tokens, saved in ``out``."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    for f in qwen3_tokenizer_dir.iterdir():
        if f.name.endswith(".gz"):
            (out / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
        elif f.is_file():
            shutil.copy(f, out / f.name)
    return AutoTokenizer.from_pretrained(out)


def build_plain_causal_lm(out: Path, qwen3_tokenizer_dir: Path, model_type: str = "qwen3", seed: int = 0) -> Path:
    """A tiny random causal LM (with an LM head, no LBNL tokens, no projector) and the plain Qwen3 tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = plain_tokenizer(qwen3_tokenizer_dir, out)
    extra = {"head_dim": 16} if model_type == "qwen3" else {}
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  tie_word_embeddings=False, **extra)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def plain_lm(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Path:
    return build_plain_causal_lm(tmp_path_factory.mktemp("plain") / "qwen3-lm", qwen3_tokenizer_dir)


def scores(reranker: Reranker) -> list[float]:
    out = [0.0] * len(DOCS)
    for r in reranker.rerank(QUERY, DOCS):
        out[r.index] = r.relevance_score
    return out


def perturb(model: TrainableLBNL, seed: int = 0) -> None:
    """Move every trainable tensor, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_state().values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_init_from_plain_causal_lm(plain_lm: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    original = load_file(str(plain_lm / "model.safetensors"))["model.embed_tokens.weight"]
    model, tok = init_lbnl_from_causal_lm(plain_lm, seed=3, out_dir=tmp_path / "lbnl")
    vocab = tok.get_vocab()
    assert EMBED_TOKEN in vocab and RERANK_TOKEN in vocab
    emb = model.backbone.get_input_embeddings().weight
    assert emb.shape[0] == original.shape[0] + 2 == len(tok)
    torch.testing.assert_close(emb[: original.shape[0]], original)
    for token in (EMBED_TOKEN, RERANK_TOKEN):
        torch.testing.assert_close(emb[vocab[token]], original.mean(0))
    # load_base takes the same path: same seeded projector, and it remembers the base's own vocabulary
    base = load_base(plain_lm, seed=3)
    assert base.base_vocab_size == original.shape[0]
    torch.testing.assert_close(base.model.projector[0].weight, model.projector[0].weight)
    # the written official layout is an ordinary checkpoint
    reranker = Reranker.from_pretrained(tmp_path / "lbnl", device="cpu")
    assert len(set(np.round(scores(reranker), 6))) == len(DOCS)


def test_related_token_init(plain_lm: Path) -> None:
    model, tok = init_lbnl_from_causal_lm(plain_lm, token_init="related")
    emb = model.backbone.get_input_embeddings().weight
    word = tok(" query", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(emb[tok.convert_tokens_to_ids(RERANK_TOKEN)], emb[word].mean(0))
    assert not torch.equal(emb[tok.convert_tokens_to_ids(RERANK_TOKEN)], emb[tok.convert_tokens_to_ids(EMBED_TOKEN)])


def test_lora_trains_only_lora_projector_and_special_rows(tiny_checkpoint: Path) -> None:
    base = load_base(tiny_checkpoint)
    before = {k: v.clone() for k, v in base.model.backbone.state_dict().items()}
    model = TrainableLBNL(base.model, base_vocab_size=base.base_vocab_size, lora_r=4, lora_alpha=8)
    groups = model.parameter_groups()
    assert len(groups["projector"]) == 2 and len(groups["tokens"]) == 1
    lora_layers = model.lora_factors()
    assert {name.rsplit(".", 1)[-1] for name in lora_layers} == PROJECTIONS
    assert len(lora_layers) == len(PROJECTIONS) * base.model.config.num_hidden_layers
    trainable = sum(p.numel() for g in groups.values() for p in g)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for g in groups.values() for p in g], lr=1e-2, weight_decay=0.1)
    tok = base.tokenizer
    ids = torch.tensor([tok(f"a b{EMBED_TOKEN} c{EMBED_TOKEN} q{RERANK_TOKEN}")["input_ids"]])
    for _ in range(3):
        hidden = model.hidden_states(ids)
        emb = model.project(hidden[ids == model.embed_token_id])
        query = model.project(hidden[ids == model.rerank_token_id])
        loss = -torch.nn.functional.cosine_similarity(emb[0:1], query).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    merged = model.merged()
    after = merged.backbone.state_dict()
    assert set(after) == set(before)
    special = [base.model.embed_token_id, base.model.rerank_token_id]
    emb_before, emb_after = before["embed_tokens.weight"], after["embed_tokens.weight"]
    keep = torch.ones(emb_before.shape[0], dtype=torch.bool)
    keep[special] = False
    assert torch.equal(emb_after[keep], emb_before[keep])  # every other row untouched, even with weight decay
    assert not torch.equal(emb_after[special], emb_before[special])
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"embed_tokens.weight"} | {f"{n}.weight" for n in lora_layers}
    assert not any(p.requires_grad for p in merged.parameters())


def test_lora_on_the_top_layers_with_frozen_tokens_stops_the_backward_pass(tiny_checkpoint: Path, tmp_path: Path) -> None:
    base = load_base(tiny_checkpoint)
    layers = base.model.config.num_hidden_layers
    before = {k: v.clone() for k, v in base.model.backbone.state_dict().items()}
    model = TrainableLBNL(base.model, base_vocab_size=base.base_vocab_size, lora_layers=1, train_tokens=False)
    assert {name.split(".")[1] for name in model.lora_factors()} == {str(layers - 1)}
    assert {name.rsplit(".", 1)[-1] for name in model.lora_factors()} == PROJECTIONS
    groups = model.parameter_groups()
    assert groups["tokens"] == [] and len(groups["projector"]) == 2
    reached: list[bool] = []
    hook = model.lbnl.backbone.base_model.model.layers[layers - 2].register_forward_hook(
        lambda module, args, out: reached.append((out[0] if isinstance(out, tuple) else out).requires_grad))
    ids = torch.tensor([base.tokenizer(f"a b{EMBED_TOKEN} q{RERANK_TOKEN}")["input_ids"]])
    hidden = model.hidden_states(ids)
    loss = -model.project(hidden[ids == model.embed_token_id]).sum()
    loss.backward()
    hook.remove()
    assert reached == [False]  # no autograd graph below the adapted layer
    perturb(model)
    adapter = model.save_adapter(tmp_path / "adapter", base=str(tiny_checkpoint), tokenizer=base.tokenizer,
                                 base_path=base.path)
    merged = model.merged().backbone.state_dict()
    changed = {k for k in merged if not torch.equal(merged[k], before[k])}
    assert changed and all(k.startswith(f"layers.{layers - 1}.") for k in changed)
    np.testing.assert_allclose(scores(Reranker.from_pretrained(adapter, device="cpu")),
                               scores(Reranker(model.lbnl, base.tokenizer)), atol=1e-4)
    with pytest.raises(ValueError, match="lora_layers must be between 1 and"):
        TrainableLBNL(load_base(tiny_checkpoint).model, lora_layers=layers + 1)


def test_adapter_scores_equal_the_merged_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    base = load_base(tiny_checkpoint)
    model = TrainableLBNL(base.model, base_vocab_size=base.base_vocab_size)
    perturb(model)
    adapter = model.save_adapter(tmp_path / "adapter", base=str(tiny_checkpoint), tokenizer=base.tokenizer,
                                 base_path=base.path)
    save_official(model.merged(), tmp_path / "full", base.tokenizer)
    assert is_adapter_dir(adapter) and not is_adapter_dir(tmp_path / "full")
    # the tokenizer equals the base's, so the adapter holds none: a few files, tiny
    assert not (adapter / "tokenizer.json").exists()
    assert sum(f.stat().st_size for f in adapter.iterdir()) < 500_000
    from_adapter = Reranker.from_pretrained(adapter, device="cpu")
    full = Reranker.from_pretrained(tmp_path / "full", device="cpu")
    np.testing.assert_allclose(scores(from_adapter), scores(full), atol=1e-4)
    plain = Reranker.from_pretrained(tiny_checkpoint, device="cpu")
    assert np.abs(np.array(scores(plain)) - np.array(scores(full))).max() > 1e-3  # the adapter does something


def test_inference_copy_scores_as_the_merged_model_and_leaves_training_alone(tiny_checkpoint: Path) -> None:
    base = load_base(tiny_checkpoint)
    model = TrainableLBNL(base.model, base_vocab_size=base.base_vocab_size)
    perturb(model)
    before = {k: v.clone() for k, v in model.trainable_state().items()}
    copy = model.inference_copy()
    assert copy.fast_path and not any(p.requires_grad for p in copy.parameters())
    live = scores(Reranker(copy, base.tokenizer))
    half = model.inference_copy(torch.bfloat16)
    assert half.dtype == torch.bfloat16
    np.testing.assert_allclose(scores(Reranker(half, base.tokenizer)), live, atol=5e-2)
    state = model.trainable_state()
    assert set(state) == set(before) and all(torch.equal(v, before[k]) for k, v in state.items())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(v.numel() for v in state.values())
    assert model.lbnl.backbone is not copy.backbone
    np.testing.assert_allclose(live, scores(Reranker(model.merged(), base.tokenizer)), atol=1e-5)


def test_a_pointwise_adapter_is_read_pointwise(tiny_checkpoint: Path, tmp_path: Path) -> None:
    base = load_base(tiny_checkpoint)
    model = TrainableLBNL(base.model, base_vocab_size=base.base_vocab_size)
    perturb(model)
    kw = dict(base=str(tiny_checkpoint), tokenizer=base.tokenizer, base_path=base.path)
    pointwise = Reranker.from_pretrained(model.save_adapter(tmp_path / "pw", extra={"mode": "pointwise"}, **kw),
                                         device="cpu")
    listwise = Reranker.from_pretrained(model.save_adapter(tmp_path / "lw", extra={"mode": "listwise"}, **kw),
                                        device="cpu")
    assert pointwise.pointwise and not listwise.pointwise
    alone = [listwise.rerank(QUERY, [d])[0].relevance_score for d in DOCS]
    np.testing.assert_allclose(scores(pointwise), alone, atol=1e-5)
    assert np.abs(np.array(scores(listwise)) - np.array(alone)).max() > 1e-4  # the two modes differ
    forced = Reranker.from_pretrained(tmp_path / "pw", device="cpu", pointwise=False)
    np.testing.assert_allclose(scores(forced), scores(listwise), atol=1e-5)
    assert not isinstance(listwise, FusedReranker)
    fused = model.save_adapter(tmp_path / "fused", extra={"fuse_bm25": 0.4}, **kw)
    loaded = Reranker.from_pretrained(fused, device="cpu")
    assert isinstance(loaded, FusedReranker) and loaded.fusion == Fusion(0.4, "minmax")
    assert not isinstance(Reranker.from_pretrained(fused, device="cpu", fusion=None), FusedReranker)
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS))
    for flags, fusion in (([], "checkpoint"), (["--no-fusion"], None)):
        out = subprocess.run([sys.executable, "-m", "lbnl", "rerank", "--model", str(fused), "--device", "cpu",
                              "-q", QUERY, "-d", str(docs), "--json", *flags], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        got = {r["index"]: r["relevance_score"] for r in map(json.loads, out.stdout.splitlines())}
        want = Reranker.from_pretrained(fused, device="cpu", fusion=fusion)
        np.testing.assert_allclose([got[i] for i in range(len(DOCS))], scores(want), atol=1e-5)
    saved = tmp_path / "saved"
    loaded.save_pretrained(saved)  # the fusion and the mode travel with a saved checkpoint
    again = Reranker.from_pretrained(saved, device="cpu")
    assert isinstance(again, FusedReranker) and again.fusion == loaded.fusion
    np.testing.assert_allclose(scores(again), scores(loaded), atol=1e-6)
    pointwise.save_pretrained(tmp_path / "pw-full")
    assert Reranker.from_pretrained(tmp_path / "pw-full", device="cpu").pointwise
    meta = json.loads((fused / ADAPTER_FILE).read_text())
    (fused / ADAPTER_FILE).write_text(json.dumps({**meta, "fuse_bm25": "high"}))
    with pytest.raises(CheckpointError, match="fusion weight must be a number"):
        Reranker.from_pretrained(fused, device="cpu")


def test_each_adapter_level_is_read_once(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """Stacked adapters: every lbnl_adapter.json is parsed once per load; a cycle is a clear error."""
    import lbnl.checkpoints.info as info

    base = load_base(tiny_checkpoint)
    model = TrainableLBNL(base.model, base_vocab_size=base.base_vocab_size)
    perturb(model)
    first = model.save_adapter(tmp_path / "first", base=str(tiny_checkpoint), tokenizer=base.tokenizer,
                               base_path=base.path)
    second = model.save_adapter(tmp_path / "second", base=str(first), tokenizer=base.tokenizer, base_path=base.path)
    reads: list[str] = []
    real = info._read_json
    monkeypatch.setattr(info, "_read_json", lambda file: reads.append(str(file)) or real(file))
    Reranker.from_pretrained(second, device="cpu")
    adapter_reads = [r for r in reads if r.endswith(ADAPTER_FILE)]
    assert sorted(adapter_reads) == sorted({str(first / ADAPTER_FILE), str(second / ADAPTER_FILE)}), reads
    meta = json.loads((first / ADAPTER_FILE).read_text())
    (first / ADAPTER_FILE).write_text(json.dumps({**meta, "base_model": str(second)}))
    with pytest.raises(CheckpointError, match="adapter cycle"):
        Reranker.from_pretrained(second, device="cpu")


def test_adapter_on_a_plain_causal_lm_with_a_grown_vocabulary(plain_lm: Path, tmp_path: Path) -> None:
    base = load_base(plain_lm)
    model = TrainableLBNL(base.model, base_vocab_size=base.base_vocab_size)
    assert model.token_rows is not None and model.token_rows.ids.tolist() == [base.base_vocab_size,
                                                                             base.base_vocab_size + 1]
    perturb(model, seed=1)
    model.round_lora(torch.bfloat16)
    adapter = model.save_adapter(tmp_path / "adapter", base=str(plain_lm), tokenizer=base.tokenizer,
                                 base_path=base.path, lora_dtype=torch.bfloat16)
    meta = read_adapter_config(adapter)
    assert meta["vocab_size"] == meta["base_vocab_size"] + 2 and meta["tokenizer"]["from_base"]
    save_official(model.merged(), tmp_path / "full", base.tokenizer)
    np.testing.assert_allclose(scores(Reranker.from_pretrained(adapter, device="cpu")),
                               scores(Reranker.from_pretrained(tmp_path / "full", device="cpu")), atol=1e-4)


def test_adapter_base_by_registered_name_and_wrong_base(tiny_checkpoint: Path, plain_lm: Path, tmp_path: Path) -> None:
    base = load_base(tiny_checkpoint)
    model = TrainableLBNL(base.model, base_vocab_size=base.base_vocab_size)
    perturb(model)
    register_base_resolver(lambda name: tiny_checkpoint if name == "test-tiny-base" else None)
    adapter = model.save_adapter(tmp_path / "adapter", base="test-tiny-base", tokenizer=base.tokenizer)
    assert (adapter / "tokenizer.json").exists()  # no base_path given: the tokenizer is stored
    loaded, _ = load_checkpoint(adapter, device="cpu")
    merged = model.merged()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, atol=1e-6, rtol=0)
    meta = read_adapter_config(adapter)
    meta["base_model"] = "no-such-base-anywhere"
    (adapter / ADAPTER_FILE).write_text(__import__("json").dumps(meta))
    with pytest.raises(CheckpointError, match="no-such-base-anywhere"):
        Reranker.from_pretrained(adapter)
    meta["base_model"] = str(plain_lm)
    (adapter / ADAPTER_FILE).write_text(__import__("json").dumps(meta))
    with pytest.raises(CheckpointError, match="does not match|embedding rows|no layer"):
        Reranker.from_pretrained(adapter)


def test_full_finetune_mode(tiny_checkpoint: Path) -> None:
    base = load_base(tiny_checkpoint)
    model = TrainableLBNL(base.model, finetune="full")
    assert all(p.requires_grad for p in model.parameters())
    assert model.token_rows is None and model.lora_factors() == {}
    with pytest.raises(ValueError, match="LoRA"):
        model.save_adapter("unused", base="x", tokenizer=base.tokenizer)


def test_chunked_attention_trains_like_sdpa(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    import lbnl.attention as A
    from lbnl.attention import use_chunked_attention

    monkeypatch.setattr(A, "CHUNK_SCORES", 4 * 16 * 40)  # several query blocks per prompt
    calls = []
    kernel_fn = A.causal_attention_chunked
    monkeypatch.setattr(A, "causal_attention_chunked", lambda *a: calls.append(1) or kernel_fn(*a))
    ids = torch.tensor([[(7 * i + 3 * r) % 500 + 10 for i in range(90)] for r in range(2)])

    def loss_and_grads(kernel: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model, _ = load_checkpoint(tiny_checkpoint, dtype="float32", device="cpu")
        if kernel == "chunked":
            use_chunked_attention(model.backbone)
        torch.manual_seed(0)
        trainable = TrainableLBNL(model, lora_r=4, lora_alpha=8)
        with torch.no_grad():
            for _, b in trainable.lora_factors().values():
                b.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        hidden = trainable.hidden_states(ids)
        loss = trainable.project(hidden).square().mean()
        loss.backward()
        return hidden.detach(), [p.grad for p in trainable.parameter_groups()["backbone"]]

    want_hidden, want_grads = loss_and_grads("sdpa")
    assert not calls
    got_hidden, got_grads = loss_and_grads("chunked")
    assert len(calls) == 2 * 2  # two layers x two rows
    np.testing.assert_allclose(got_hidden.numpy(), want_hidden.numpy(), atol=1e-5)
    assert len(got_grads) == len(want_grads) > 0
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-4)


def test_chunked_attention_leaves_padding_masks_to_sdpa(tiny_checkpoint: Path) -> None:
    from lbnl.attention import use_chunked_attention

    ids = torch.tensor([[0, 0, 11, 12, 13, 14], [21, 22, 23, 24, 25, 26]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    outs = []
    for chunked in (False, True):
        model, _ = load_checkpoint(tiny_checkpoint, dtype="float32", device="cpu")
        if chunked:
            use_chunked_attention(model.backbone)
        with torch.no_grad():
            outs.append(model.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state)
    np.testing.assert_allclose(outs[1][:, 2:].numpy(), outs[0][:, 2:].numpy(), atol=1e-5)
