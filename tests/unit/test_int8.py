"""lbnl.int8: int8 weights and per-token int8 activations in the decoder's matmuls, int8 attention scores.

Against float computations on random inputs and a tiny random Qwen3 model; every test checks that an int8
matmul (``torch._int_mm``, or oneDNN's int8 linear where that backend is in use) actually ran. Eager kernels
(``compiled=False``) unless a test is about the compiled ones; nothing here is timed."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lbnl import int8
from lbnl.attention import causal_attention_chunked
from lbnl.checkpoints import load_checkpoint
from lbnl.engine import decode


class _Spy:
    """Calls ``op`` and hands its arguments and result to ``record``; other attributes are the op's own, since
    inductor reads an op's overloads (``torch.ops.onednn.qlinear_pointwise.default``) when it first compiles."""

    def __init__(self, op: Any, record: Callable[..., None]) -> None:
        self.op, self.record = op, record

    def __call__(self, *args: Any) -> torch.Tensor:
        out = self.op(*args)
        self.record(*args, out=out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.op, name)


@pytest.fixture
def int8_matmuls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """``(rows, in, out)`` of every int8 matmul made while the test runs, through either backend."""
    calls: list[tuple[int, ...]] = []

    def record(x: torch.Tensor, *args: Any, out: torch.Tensor) -> None:
        assert x.dtype == torch.int8
        calls.append((*x.shape, out.shape[-1]))

    monkeypatch.setattr(torch, "_int_mm", _Spy(torch._int_mm, record))
    if int8.onednn_available():
        monkeypatch.setattr(torch.ops.onednn, "qlinear_pointwise", _Spy(torch.ops.onednn.qlinear_pointwise, record))
    return calls


def _amx() -> bool:
    from lbnl.hardware import cpu_has_amx

    return cpu_has_amx()


#: The packed backend's tests: only where it is used (elsewhere oneDNN's op is slow and, without VNNI, saturates).
amx_onednn = pytest.mark.skipif(not (int8.onednn_available() and _amx()),
                                reason="the packed int8 backend runs on AMX CPUs with oneDNN's int8 linear only")


def test_weights_per_output_channel() -> None:
    w = torch.randn(6, 32) * torch.logspace(-2, 2, 6).unsqueeze(1)
    q, scale = int8.quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (6,) and int(q.abs().max()) == 127
    assert (q.abs().amax(1) == 127).all()  # every row uses the full range, whatever its magnitude
    assert ((q.float() * scale.unsqueeze(1) - w).abs() <= scale.unsqueeze(1) / 2 + 1e-7).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_matches_float(dtype: torch.dtype, int8_matmuls: list) -> None:
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    x = torch.randn(3, 5, 64, generator=g).to(dtype)
    x[0, 1] *= 50  # one loud token: per-token scales keep the others exact to their own range
    with torch.no_grad():
        ref = linear.to(dtype)(x).float()
    layer = int8.Int8Linear.from_linear(linear, compiled=False)
    out = layer(x)
    assert out.dtype == dtype and out.shape == (3, 5, 48)
    assert int8_matmuls == [(15, 64, 48)]
    err = (out.float() - ref).abs().amax(-1) / ref.abs().amax(-1)
    assert float(err.max()) < 0.03


def test_shared_quantization_and_token_selection(int8_matmuls: list) -> None:
    x = torch.randn(1, 7, 16)
    a, b = (int8.Int8Linear(torch.randn(n, 16), compiled=False) for n in (8, 4))
    rows = int8.quantize_rows(x, compiled=False)
    assert torch.equal(a(rows), a(x)) and torch.equal(b(rows[:, [2, 6]]), b(x[:, [2, 6]]))
    assert len(int8_matmuls) == 4


def test_gated_mlp_matches_float(int8_matmuls: list) -> None:
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

    mlp = Qwen3MLP(Qwen3Config(hidden_size=32, intermediate_size=80, hidden_act="silu")).eval()
    x = torch.randn(9, 32)
    with torch.no_grad():
        ref = mlp(x)
    out = int8.Int8GatedMLP(mlp.gate_proj, mlp.up_proj, mlp.down_proj, compiled=False)(x)
    assert [c[1:] for c in int8_matmuls] == [(32, 160), (80, 32)]  # joined gate/up, then down
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: the native SiLU product where built
def test_gated_mlp_with_outlier_channels_matches_float(dtype: torch.dtype, int8_matmuls: list) -> None:
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

    mlp = Qwen3MLP(Qwen3Config(hidden_size=32, intermediate_size=80, hidden_act="silu")).eval().to(dtype)
    x = torch.randn(9, 32).to(dtype)
    x[:, [5, 20]] *= 200  # loud input channels
    with torch.no_grad():
        ref = mlp(x).float()
        mid = torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    outliers_in = int8.outlier_channels(x.float().abs().amax(0), 2)
    outliers_mid = int8.outlier_channels(mid.float().abs().amax(0), 4)
    kept = int8.Int8GatedMLP(mlp.gate_proj, mlp.up_proj, mlp.down_proj, compiled=False, outliers_in=outliers_in,
                             outliers_mid=outliers_mid)
    plain = int8.Int8GatedMLP(mlp.gate_proj, mlp.up_proj, mlp.down_proj, compiled=False)
    error = lambda y: float((y.float() - ref).abs().max() / ref.abs().max())  # noqa: E731
    out = kept(x)
    assert out.dtype == dtype and [c[1:] for c in int8_matmuls[:2]] == [(32, 160), (80, 32)]
    assert error(out) < 0.05 and error(out) < error(plain(x))


def test_smoothing_keeps_the_function() -> None:
    linear = nn.Linear(16, 8, bias=False)
    x = torch.randn(20, 16)
    x[:, 3] *= 100  # an outlier channel, as in the inputs SmoothQuant was made for
    s = int8.smoothing(x.abs().amax(0), [linear.weight], 0.5)
    smooth = int8.Int8Linear.from_linear(linear, compiled=False, smooth=s)
    plain = int8.Int8Linear.from_linear(linear, compiled=False)
    ref = linear(x)
    error = lambda y: float((y - ref).abs().max())  # noqa: E731
    assert error(smooth(x)) < error(plain(x)) and error(smooth(x)) < 0.05 * float(ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outlier_channels_stay_out_of_int8(dtype: torch.dtype, int8_matmuls: list) -> None:
    linear = nn.Linear(32, 8, bias=True).to(dtype)
    x = torch.randn(20, 32).to(dtype)
    x[:, [3, 17]] *= 300  # two loud channels set every token's scale in plain int8
    ref = linear(x).float()
    kept = int8.outlier_channels(x.float().abs().amax(0), 2)
    assert kept.tolist() == [3, 17]
    layer = int8.Int8Linear.from_linear(linear, compiled=False, outliers=kept)
    plain = int8.Int8Linear.from_linear(linear, compiled=False)
    assert layer.outlier_weight.dtype == dtype and layer.outlier_weight.shape == (8, 2)
    assert (layer.qweight[:, kept] == 0).all()  # those columns no longer set the weight scales either
    rows = layer.quantize(x)
    assert rows.outliers is not None and torch.equal(rows.outliers, x[:, kept])
    assert (rows.values[:, kept] == 0).all()
    error = lambda y: float((y.float() - ref).abs().max())  # noqa: E731
    assert error(layer(x)) < 0.25 * error(plain(x))
    assert len(int8_matmuls) == 2  # the rest still went through the int8 kernel
    with pytest.raises(AssertionError, match="outlier"):
        layer(int8.quantize_rows(x, compiled=False))  # rows made without the outlier channels


def test_outlier_channels_in_the_decoder(tiny_checkpoint: Path, int8_matmuls: list) -> None:
    from lbnl.checkpoints import load_tokenizer
    from lbnl.errors import InvalidInputError
    from lbnl.hardware import quantize_int8, quantize_model

    rows = int8.calibration_rows(load_tokenizer(tiny_checkpoint))
    model = _model(tiny_checkpoint, torch.bfloat16)
    with torch.inference_mode():
        ref, _, _ = decode(model.backbone, rows[:1], attention="chunked")
    with pytest.raises(InvalidInputError, match="calibration"):
        quantize_int8(copy.deepcopy(model), compiled=False, outliers=4)
    with pytest.raises(InvalidInputError, match="tokenizer"):
        quantize_model(copy.deepcopy(model), "int8")
    before = copy.deepcopy(model.backbone.layers[0].input_layernorm.weight)
    kept = quantize_int8(model, compiled=False, calibration=rows, outliers=4)
    layer = kept.backbone.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    assert torch.equal(layer.input_layernorm.weight, before)  # no smoothing with outlier channels
    assert attn.q_proj.outlier_index.numel() == 4 and mlp.down_proj.outlier_index.numel() == 4
    assert attn.k_proj.outlier_index is attn.q_proj.outlier_index and attn.v_proj.inverse is attn.q_proj.inverse
    assert isinstance(int8.shared_input(attn, torch.randn(3, attn.q_proj.in_features).bfloat16()), int8.QuantizedRows)
    with torch.inference_mode():
        out, _, _ = decode(kept.backbone, rows[:1], attention="chunked")
    assert len(int8_matmuls) == 6 * len(kept.backbone.layers)
    assert float(torch.nn.functional.cosine_similarity(out.float(), ref.float(), dim=-1).min()) > 0.99


def test_compiled_kernels_agree_with_eager() -> None:
    if not int8.compiler_works():
        pytest.skip("torch.compile cannot build CPU kernels here (no C++ compiler)")
    x = torch.randn(37, 64).bfloat16()
    eager, compiled = int8.kernel("quantize", compiled=False)(x), int8.kernel("quantize")(x)
    assert torch.allclose(eager[1], compiled[1]) and (eager[0].int() - compiled[0].int()).abs().max() <= 1


def test_a_kernel_that_fails_to_compile_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    if not int8.compiler_works():
        pytest.skip("torch.compile cannot build CPU kernels here (no C++ compiler)")
    tried = []

    def failing_backend(graph: torch.fx.GraphModule, inputs: list) -> Callable:
        tried.append(graph)
        raise RuntimeError("the C++ compiler rejected the generated code")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: real_compile(fn, backend=failing_backend))
    monkeypatch.setattr(int8, "_COMPILED", {})
    x = torch.randn(37, 64)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        values, scale = int8.kernel("quantize")(x)
    assert tried, "the compiled kernel was never tried"
    eager = int8.kernel("quantize", compiled=False)(x)
    assert torch.equal(values, eager[0]) and torch.equal(scale, eager[1])
    assert int8.kernel("quantize") is int8._EAGER["quantize"]  # not tried again


def _model(tiny_checkpoint: Path, dtype: torch.dtype):
    model, _ = load_checkpoint(tiny_checkpoint, dtype=dtype, device="cpu")
    return model


@pytest.mark.parametrize("smooth", [False, True])
def test_converted_decoder_matches_float(tiny_checkpoint: Path, int8_matmuls: list, smooth: bool) -> None:
    model = _model(tiny_checkpoint, torch.float32)
    rows = [[int(t) for t in torch.randint(10, 1000, (60,), generator=torch.Generator().manual_seed(n))]
            for n in range(2)]
    with torch.inference_mode():
        ref, _, _ = decode(model.backbone, rows, attention="chunked")
    converted = copy.deepcopy(model)
    ranges = int8.activation_ranges(converted.backbone, rows) if smooth else None
    layers = len(converted.backbone.layers)
    assert int8.convert_linears(converted.backbone, compiled=False, ranges=ranges) == 6 * layers
    assert isinstance(converted.backbone.layers[0].self_attn.q_proj, int8.Int8Linear)
    assert isinstance(converted.backbone.layers[0].mlp, int8.Int8GatedMLP)
    with torch.inference_mode():
        out, _, _ = decode(converted.backbone, rows, attention="chunked")
    # per layer: q, k and v share one quantized input, then o, gate/up and down: 6 int8 matmuls
    assert len(int8_matmuls) == 6 * layers
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
    assert float(cos.min()) > 0.99


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: the native path where it is built
@pytest.mark.parametrize("n,start,heads,kv_heads", [(40, 0, 4, 2), (30, 13, 6, 2), (1, 9, 4, 4)])
def test_int8_attention_matches_float(n: int, start: int, heads: int, kv_heads: int, dtype: torch.dtype,
                                      int8_matmuls: list) -> None:
    g = torch.Generator().manual_seed(n)
    q = torch.randn(n, heads, 16, generator=g)
    k = torch.randn(kv_heads, start + n, 16, generator=g) + 3.0  # a shared offset: the key mean takes it out
    v = torch.randn(kv_heads, start + n, 16, generator=g)
    ref = causal_attention_chunked(q, k, v, 0.25)
    out = int8.causal_attention_int8(q.to(dtype), k.to(dtype), v.to(dtype), 0.25, compiled=False)
    assert out.shape == ref.shape and out.dtype == dtype and len(int8_matmuls) == kv_heads
    assert float((out.float() - ref).abs().max()) < (0.05 if dtype == torch.float32 else 0.07)


def test_reranker_int8_paths(tiny_checkpoint: Path) -> None:
    from lbnl import Reranker
    from lbnl.hardware import weight_plan

    docs = [f"green tea study number {i} about catechins and cholesterol" for i in range(8)]
    exact = Reranker.from_pretrained(tiny_checkpoint, device="cpu", fusion=None)
    w8a8 = Reranker.from_pretrained(tiny_checkpoint, device="cpu", quantize="int8", fusion=None)
    assert w8a8.model.quantized == "int8" and w8a8.model.dtype == exact.model.dtype
    assert w8a8.model.backbone.layers[0].mlp.down_proj.outlier_index.numel() == int8.OUTLIER_CHANNELS
    a = sorted(exact.rerank("green tea", docs), key=lambda r: r.index)
    b = sorted(w8a8.rerank("green tea", docs), key=lambda r: r.index)
    assert max(abs(x.relevance_score - y.relevance_score) for x, y in zip(a, b)) < 0.05
    plain = Reranker.from_pretrained(tiny_checkpoint, device="cpu", quantize="int8-plain", fusion=None)
    assert plain.model.quantized == "int8" and plain.model.backbone.layers[0].mlp.down_proj.outlier_index is None
    assert weight_plan("int8", "cpu", None) == ("int8", None)
    assert weight_plan("int8-dynamic", "cpu", None) == ("int8-dynamic", "float32")


def test_int8_reranker_runs_int8_attention_where_auto_picks_the_chunked_kernel(
        tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lbnl import Reranker, hardware

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(hardware, "INT8_ATTENTION_MIN_HEAD_DIM", 16)  # the tiny model's heads
    calls = []
    real = int8.causal_attention_int8
    monkeypatch.setattr(int8, "causal_attention_int8", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    docs = [f"green tea study number {i} about catechins and cholesterol" for i in range(4)]
    bf16 = Reranker.from_pretrained(tiny_checkpoint, device="cpu", dtype="bfloat16", fusion=None)
    assert bf16.model.attention_kernel == "chunked"
    bf16.rerank("green tea", docs)
    assert not calls
    w8a8 = Reranker.from_pretrained(tiny_checkpoint, device="cpu", dtype="bfloat16", quantize="int8", fusion=None)
    assert w8a8.model.attention_kernel == "int8"
    a = sorted(bf16.rerank("green tea", docs), key=lambda r: r.index)
    b = sorted(w8a8.rerank("green tea", docs), key=lambda r: r.index)
    assert calls, "the int8 attention kernel never ran"
    assert max(abs(x.relevance_score - y.relevance_score) for x, y in zip(a, b)) < 0.1


def test_calibration_prompts_are_real_rerank_prompts(tiny_checkpoint: Path) -> None:
    from lbnl.checkpoints import load_tokenizer
    from lbnl.model import special_token_ids

    tokenizer = load_tokenizer(tiny_checkpoint)
    rows = int8.calibration_rows(tokenizer)
    embed, rerank = special_token_ids(tokenizer)
    assert len(rows) == len(int8.CALIBRATION)
    for row, (_, docs) in zip(rows, int8.CALIBRATION):
        assert row.count(embed) == len(docs) and row.count(rerank) == 1


def test_calibration_changes_only_the_smoothing(tiny_checkpoint: Path, int8_matmuls: list) -> None:
    from lbnl.checkpoints import load_tokenizer
    from lbnl.hardware import quantize_int8

    rows = int8.calibration_rows(load_tokenizer(tiny_checkpoint))
    plain = quantize_int8(_model(tiny_checkpoint, torch.float32), compiled=False)
    smooth = quantize_int8(_model(tiny_checkpoint, torch.float32), compiled=False, calibration=rows, alpha=0.5)
    assert plain.backbone.layers[0].mlp.down_proj.inverse is None
    # the factors went into the norm before q/k/v (folded) and into the down projection's quantization
    layer, before = smooth.backbone.layers[0], _model(tiny_checkpoint, torch.float32).backbone.layers[0]
    assert not torch.equal(layer.input_layernorm.weight, before.input_layernorm.weight)
    assert layer.self_attn.q_proj.inverse is None and layer.mlp.down_proj.inverse is not None
    with torch.inference_mode():
        a, _, _ = decode(plain.backbone, rows[:1], attention="chunked")
        b, _, _ = decode(smooth.backbone, rows[:1], attention="chunked")
    assert int8_matmuls and float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min()) > 0.99


def test_fastest_picks_int8_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    from lbnl import hardware

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(hardware, "cpu_has_vnni", lambda: True)
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    assert hardware.FASTEST_USES_INT8
    assert hardware.fastest_weights("cpu", None) == ("int8", "bfloat16")
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: True)
    assert hardware.fastest_weights("cpu", None) == (None, "bfloat16")   # AMX: bf16 (int8 no faster there)
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(hardware, "FASTEST_USES_INT8", False)
    assert hardware.fastest_weights("cpu", None) == (None, "bfloat16")
    monkeypatch.setattr(hardware, "FASTEST_USES_INT8", True)
    monkeypatch.setattr(hardware, "cpu_has_vnni", lambda: False)
    assert hardware.fastest_weights("cpu", None) == (None, "bfloat16")
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert hardware.fastest_weights("cpu", None) == ("int8-dynamic", None)


@amx_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onednn_backend_gives_the_same_bits(dtype: torch.dtype, int8_matmuls: list) -> None:
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

    g = torch.Generator().manual_seed(4)
    x = (torch.randn(2, 9, 64, generator=g) * 3).to(dtype)
    x[1, 3] *= 60
    w = torch.randn(48, 64, generator=g).to(dtype)
    for outliers in (None, torch.tensor([2, 7, 40])):
        a = int8.Int8Linear(w, compiled=False, outliers=outliers)
        b = int8.Int8Linear(w, compiled=False, outliers=outliers, backend="onednn")
        products, scales = b.matmul(b.quantize(x))
        assert products.dtype == dtype and torch.equal(scales, torch.ones(48)) and "backend=onednn" in repr(b)
        assert torch.equal(a(x), b(x))
    mlp = Qwen3MLP(Qwen3Config(hidden_size=64, intermediate_size=80, hidden_act="silu")).to(dtype)
    plain, packed = (int8.Int8GatedMLP(mlp.gate_proj, mlp.up_proj, mlp.down_proj, compiled=False, backend=name)
                     for name in int8.MATMUL_BACKENDS)
    assert torch.equal(plain(x), packed(x))  # the fused middle reads scaled products as it rounds int32 ones
    assert (18, 64, 48) in int8_matmuls and (18, 64, 160) in int8_matmuls and (18, 80, 64) in int8_matmuls
    assert torch.equal(copy.deepcopy(packed)(x), packed(x))  # the packed weights are packed again in a copy
    # sums beyond 2**24: oneDNN turns them into float as torch does before scaling
    big = int8.Int8Linear(torch.ones(4, 4096) * torch.tensor([[1.0], [0.5], [3.0], [0.7]]), compiled=False,
                          backend="onednn")
    rows = big.quantize(torch.ones(2, 4096) * torch.tensor([[1.0], [-0.9]]))
    exact = torch._int_mm(rows.values, big.qweight.t())
    assert int(exact.abs().max()) > 2**24
    assert torch.equal(big.matmul(rows)[0], (exact.float() * big.weight_scale).to(torch.float32))
    with pytest.raises(ValueError, match="backend"):
        int8.Int8Linear(w, backend="fbgemm")


def test_the_packed_backend_is_chosen_on_amx_only(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lbnl import hardware
    from lbnl.errors import InvalidInputError

    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    assert hardware.int8_backend() == "int_mm"
    with pytest.raises(InvalidInputError, match="AMX"):
        hardware.quantize_int8(_model(tiny_checkpoint, torch.float32), backend="onednn")
    with pytest.raises(InvalidInputError, match="backend"):
        hardware.quantize_int8(_model(tiny_checkpoint, torch.float32), backend="fbgemm")
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: True)
    assert hardware.int8_backend() == ("onednn" if int8.onednn_available() else "int_mm")
    monkeypatch.setattr(hardware, "INT8_ONEDNN_ON_AMX", False)
    assert hardware.int8_backend() == "int_mm"


@amx_onednn
def test_int8_on_amx_runs_the_packed_kernel_with_the_same_scores(tiny_checkpoint: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from lbnl import Reranker
    from lbnl.checkpoints import load_tokenizer
    from lbnl.hardware import quantize_model

    docs = [f"green tea study number {i} about catechins and cholesterol" for i in range(6)]
    ran = []
    monkeypatch.setattr(torch.ops.onednn, "qlinear_pointwise",
                        _Spy(torch.ops.onednn.qlinear_pointwise, lambda *args, out: ran.append(out.shape)))
    packed = Reranker.from_pretrained(tiny_checkpoint, device="cpu", quantize="int8", fusion=None)
    assert packed.model.backbone.layers[0].mlp.down_proj.backend == "onednn"
    a = [r.relevance_score for r in sorted(packed.rerank("green tea", docs), key=lambda r: r.index)]
    assert ran, "the packed kernel never ran"
    model = _model(tiny_checkpoint, packed.model.dtype)
    quantize_model(model, "int8", load_tokenizer(tiny_checkpoint), backend="int_mm")
    assert model.backbone.layers[0].mlp.down_proj.backend == "int_mm"
    b = [r.relevance_score for r in sorted(Reranker(model, load_tokenizer(tiny_checkpoint)).rerank("green tea", docs),
                                           key=lambda r: r.index)]
    assert a == b
