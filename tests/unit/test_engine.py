"""lbnl's own decoder loop (prefix reuse, last-layer pruning, suffix cut) against the plain forward and the
official-style reference, plus presets and int8 quantization. Correctness only; nothing here is timed."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lbnl import CheckpointError, InvalidInputError, Reranker, native
from lbnl.hardware import cpu_has_fast_bf16, fastest_weights, quantize_int8_dynamic
from lbnl.checkpoints import load_checkpoint
from lbnl.prompt import build_prompt
from helpers import in_input_order, make_docs


def test_encode_equals_plain_forward(family_checkpoint: Path) -> None:
    model, tok = load_checkpoint(family_checkpoint, device="cpu")
    assert model.fast_path
    prompts = [build_prompt("green tea", make_docs(3, seed=1)), build_prompt("coffee", make_docs(2, seed=2, hi=60))]
    rows = [tok(p)["input_ids"] for p in prompts]
    ids = torch.zeros((2, max(map(len, rows))), dtype=torch.long)
    for n, r in enumerate(rows):
        ids[n, : len(r)] = torch.tensor(r)
    with torch.inference_mode():
        docs, query = model(ids)
        cut = [r[: r.index(model.rerank_token_id) + 1] for r in rows]
        for got_docs, got_query in (model.encode(rows), model.encode(cut)):
            for a, b in zip(docs, got_docs):
                np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
            np.testing.assert_allclose(query.numpy(), got_query.numpy(), atol=1e-5)
        shared = 30
        first = model.prefix_state(rows[0][:12])
        state = model.prefix_state(rows[0][:shared], first)
        assert len(state) == shared and state.keys[0].shape[2] == shared
        got_docs, got_query = model.encode([cut[0][shared:]], prefix=state)
    np.testing.assert_allclose(docs[0].numpy(), got_docs[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(query[0].numpy(), got_query[0].numpy(), atol=1e-5)


def _encode_matches_forward(model, rows: list[list[int]]) -> None:
    ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    for n, r in enumerate(rows):
        ids[n, : len(r)] = torch.tensor(r)
    with torch.inference_mode():
        (want,), query = model(ids)
        (got,), got_query = model.encode(rows)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_query.numpy(), query.numpy(), atol=1e-5)


def test_joined_mlp_weights_follow_every_weight_change(tiny_checkpoint: Path) -> None:
    """The fast path joins gate and up projections into one matrix; in-place updates, replaced weights and
    dtype changes must all reach it."""
    model, tok = load_checkpoint(tiny_checkpoint, device="cpu")
    rows = [tok(build_prompt("green tea", make_docs(3, seed=4)))["input_ids"]]
    _encode_matches_forward(model, rows)
    mlp = model.backbone.layers[0].mlp
    joined = mlp._lbnl_gate_up
    assert mlp.gate_proj.weight.data_ptr() == joined.data_ptr()  # a view: no second copy of the weights
    with torch.no_grad():
        mlp.up_proj.weight.mul_(1.5)
    _encode_matches_forward(model, rows)
    mlp.gate_proj.weight = torch.nn.Parameter(torch.randn_like(mlp.gate_proj.weight), requires_grad=False)
    _encode_matches_forward(model, rows)
    assert mlp._lbnl_gate_up is not joined
    state = copy.deepcopy(model.state_dict())
    model.to(torch.bfloat16).to(torch.float32)
    model.load_state_dict(state)
    _encode_matches_forward(model, rows)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile needs a C++ compiler")
def test_compiled_kernels_give_the_same_scores(tiny_checkpoint: Path, monkeypatch) -> None:
    import lbnl.engine as E

    calls: dict[str, int] = {}
    real_compile = torch.compile

    def counting_compile(fn, **kwargs):
        compiled = real_compile(fn, **kwargs)

        def run(*args):
            calls[fn.__name__] = calls.get(fn.__name__, 0) + 1
            return compiled(*args)
        return run

    monkeypatch.setattr(E, "_COMPILED", {})
    monkeypatch.setattr(E.torch, "compile", counting_compile)
    model, tok = load_checkpoint(tiny_checkpoint, device="cpu")
    docs = make_docs(12, seed=5)
    eager = in_input_order(Reranker(model, tok).rerank("green tea", docs))
    assert calls == {}, "the eager path ran a compiled kernel"
    compiled = in_input_order(Reranker(model.compile_kernels(), tok).rerank("green tea", docs))
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    assert calls.get("_rms", 0) > 0 and calls.get("_silu_mul", 0) > 0, f"compiled kernels did not run: {calls}"


def test_cached_prefixes_never_change_a_score(tiny_checkpoint: Path) -> None:
    """Earlier calls never change a score (prefix states live for one call), and changed weights are used at once."""
    docs = make_docs(7, seed=6)
    warm = Reranker.from_pretrained(tiny_checkpoint, device="cpu", block_size=3)
    for q in ("tea", "tea and coffee", "green"):
        warm.rerank(q, docs)
    cold = Reranker.from_pretrained(tiny_checkpoint, device="cpu", block_size=3)
    assert in_input_order(warm.rerank("tea and coffee", docs)) == in_input_order(cold.rerank("tea and coffee", docs))
    before = in_input_order(warm.rerank("green", docs))
    with torch.no_grad():
        for p in warm.model.backbone.layers[0].parameters():
            p.mul_(1.5)
    changed = in_input_order(warm.rerank("green", docs))
    fresh = Reranker(copy.deepcopy(warm.model), warm.tokenizer, block_size=3, fast_forward=False)
    np.testing.assert_allclose(changed, in_input_order(fresh.rerank("green", docs)), atol=1e-5)
    assert not np.allclose(before, changed, atol=1e-5)


def test_presets_and_int8(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from lbnl.hardware import PRESETS

    fast = Reranker.from_pretrained(tiny_checkpoint, device="cpu", preset="fast")
    assert fast.block_size == PRESETS["fast"].block_size and fast.model.quantized is None
    assert Reranker.from_pretrained(tiny_checkpoint, device="cpu", preset="fast", block_size=5).block_size == 5
    bf16_or_int8 = Reranker.from_pretrained(tiny_checkpoint, device="cpu", preset="fastest")
    assert bf16_or_int8.block_size == 16
    if cpu_has_fast_bf16():
        assert bf16_or_int8.model.dtype == torch.bfloat16
        assert bf16_or_int8.model.quantized == fastest_weights("cpu", None)[0]  # int8 with VNNI and no AMX
    else:
        assert bf16_or_int8.model.quantized == "int8-dynamic"
    fastest = Reranker.from_pretrained(tiny_checkpoint, device="cpu", preset="fastest", dtype="float32")
    assert fastest.model.quantized == "int8-dynamic"
    assert type(fastest.model.backbone.layers[0].mlp.up_proj).__module__.startswith("torch.ao.nn.quantized")
    docs = make_docs(20, seed=9)
    exact = in_input_order(fast.rerank("green tea", docs))
    int8 = in_input_order(fastest.rerank("green tea", docs))
    assert np.isfinite(int8).all() and int8 != exact
    assert np.corrcoef(exact, int8)[0, 1] > 0.9
    with pytest.raises(CheckpointError, match="quantized"):
        fastest.save_pretrained(tmp_path / "q")
    with pytest.raises(InvalidInputError, match="preset"):
        Reranker.from_pretrained(tiny_checkpoint, device="cpu", preset="turbo")
    with pytest.raises(InvalidInputError, match="quantization"):
        Reranker.from_pretrained(tiny_checkpoint, device="cpu", quantize="int4")
    model, _ = load_checkpoint(tiny_checkpoint, dtype="bfloat16", device="cpu")
    with pytest.raises(InvalidInputError, match="float32"):
        quantize_int8_dynamic(model)


@pytest.mark.parametrize("n,start,heads,kv_heads,budget", [
    (37, 0, 4, 2, 1 << 25),        # one block
    (300, 0, 4, 4, 4 * 20 * 300),  # blocks of 20 queries
    (50, 13, 6, 2, 6 * 16 * 63),   # a cached prefix of 13 keys, blocks of the 16-query minimum
    (1, 5, 4, 2, 1 << 25),         # a single new token
])
def test_chunked_attention_equals_causal_sdpa(monkeypatch, n: int, start: int, heads: int, kv_heads: int,
                                              budget: int) -> None:
    import lbnl.attention as M

    monkeypatch.setattr(M, "CHUNK_SCORES", budget)
    q, k, v = torch.randn(n, heads, 8), torch.randn(kv_heads, start + n, 8), torch.randn(kv_heads, start + n, 8)
    got = M.causal_attention_chunked(q, k, v, 0.3)
    padded = torch.cat([torch.zeros(1, heads, start, 8), q.transpose(0, 1).unsqueeze(0)], dim=2)
    want = torch.nn.functional.scaled_dot_product_attention(
        padded, k.unsqueeze(0), v.unsqueeze(0), is_causal=True, scale=0.3, enable_gqa=True)[0, :, start:]
    np.testing.assert_allclose(got.numpy(), want.transpose(0, 1).numpy(), atol=1e-5)


def test_chunked_attention_kernel_scores_like_sdpa(tiny_checkpoint: Path, monkeypatch) -> None:
    import lbnl.attention as M

    monkeypatch.setattr(M, "CHUNK_SCORES", 4 * 16 * 64)  # many blocks even on short prompts
    queries = ["green tea", "coffee prices", "basket league score"]
    docs = [make_docs(9, seed=s) for s in range(3)]
    scores = {}
    calls = []
    kernel_fn = M.causal_attention_chunked
    monkeypatch.setattr(M, "causal_attention_chunked", lambda *a: calls.append(1) or kernel_fn(*a))
    for kernel in ("sdpa", "chunked"):
        rr = Reranker.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32", block_size=4)
        rr.model.attention = kernel
        assert rr.model.attention_kernel == kernel
        scores[kernel] = [in_input_order(r) for r in rr.rerank_many(queries, docs)]
        assert bool(calls) == (kernel == "chunked"), f"{kernel}: the chunked kernel ran {len(calls)} times"
    np.testing.assert_allclose(scores["chunked"], scores["sdpa"], atol=1e-5)


def test_attention_kernel_choice() -> None:
    from lbnl.hardware import cpu_has_amx, resolve_attention

    cpu = torch.device("cpu")
    assert resolve_attention("auto", torch.float32, cpu) == "sdpa"
    fast_chunked = cpu_has_fast_bf16() and not cpu_has_amx()
    amx = cpu_has_amx() and native.amx_attention_available()
    assert resolve_attention("auto", torch.bfloat16, cpu, None, 128) == (
        "chunked" if fast_chunked else "amx" if amx else "sdpa")
    assert resolve_attention("chunked", torch.float32, cpu) == "chunked"
    with pytest.raises(InvalidInputError, match="attention must be one of"):
        resolve_attention("flash", torch.float32, cpu)


def test_asking_for_the_amx_kernel_where_it_cannot_run_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from lbnl import hardware

    cpu = torch.device("cpu")
    with pytest.raises(InvalidInputError, match="bf16 on a CPU .the model is float32 on cpu"):
        hardware.resolve_attention("amx", torch.float32, cpu, None, 128)
    with pytest.raises(InvalidInputError, match="multiple of 32 wide .they are 16"):
        hardware.resolve_attention("amx", torch.bfloat16, cpu, None, 16)
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    with pytest.raises(InvalidInputError, match="no AMX"):
        hardware.resolve_attention("amx", torch.bfloat16, cpu, None, 128)
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(native, "amx_attention_available", lambda: False)
    with pytest.raises(InvalidInputError, match="native kernels are not built"):
        hardware.resolve_attention("amx", torch.bfloat16, cpu, None, 128)
    monkeypatch.setattr(native, "amx_attention_available", lambda: True)
    assert hardware.resolve_attention("amx", torch.bfloat16, cpu, None, 128) == "amx"


@pytest.mark.skipif(not native.amx_attention_available(), reason="needs a CPU with AMX-BF16 tiles and lbnl's native kernels")
def test_amx_attention_kernel_scores_like_sdpa(tmp_path: Path, qwen3_tokenizer_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from lbnl.testing.checkpoints import build_random_checkpoint

    ckpt = build_random_checkpoint(tmp_path / "ckpt", tokenizer_dir=qwen3_tokenizer_dir, head_dim=32)
    calls = []
    kernel_fn = native.causal_attention_amx
    monkeypatch.setattr(native, "causal_attention_amx", lambda *a: calls.append(a[1].shape[1]) or kernel_fn(*a))
    queries = ["green tea", "coffee prices", "basket league score"]
    docs = [make_docs(9, seed=s) for s in range(3)]
    scores = {}
    for kernel in ("sdpa", "amx"):
        rr = Reranker.from_pretrained(ckpt, device="cpu", dtype="bfloat16", block_size=4, fusion=None)
        rr.model.attention = kernel
        assert rr.model.attention_kernel == kernel
        scores[kernel] = np.array([in_input_order(r) for r in rr.rerank_many(queries, docs)])
        assert bool(calls) == (kernel == "amx"), f"{kernel}: the AMX kernel ran {len(calls)} times"
    assert any(keys > 200 for keys in calls), "no call attended over a long prompt"
    np.testing.assert_allclose(scores["amx"], scores["sdpa"], atol=0.01)  # a halved softmax scale: 0.05


@pytest.mark.parametrize("amx,amx_kernel", [(False, False), (True, False), (True, True)])
def test_int8_models_get_int8_attention_where_auto_picks_the_chunked_kernel(monkeypatch: pytest.MonkeyPatch,
                                                                             amx: bool, amx_kernel: bool) -> None:
    from lbnl import hardware

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(native, "amx_attention_available", lambda: amx_kernel)
    cpu = torch.device("cpu")
    bf16 = ("amx" if amx_kernel else "sdpa") if amx else "chunked"
    assert hardware.resolve_attention("auto", torch.bfloat16, cpu, "int8", 128) == (bf16 if amx else "int8")
    assert hardware.resolve_attention("auto", torch.bfloat16, cpu, "int8", 64) == bf16   # narrow heads: slower
    assert hardware.resolve_attention("auto", torch.bfloat16, cpu, None, 128) == bf16
    assert hardware.resolve_attention("auto", torch.bfloat16, cpu, None, 48) == ("sdpa" if amx else "chunked")
    assert hardware.resolve_attention("chunked", torch.bfloat16, cpu, "int8", 128) == "chunked"
    monkeypatch.setattr(hardware, "INT8_MODELS_USE_INT8_ATTENTION", False)
    assert hardware.resolve_attention("auto", torch.bfloat16, cpu, "int8", 128) == bf16
