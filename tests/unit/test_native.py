"""lbnl.native: the compiled attention and int8 kernels against torch's own operations (one bf16 rounding
step at most). Skipped where the kernels cannot be built (no C++ compiler or ninja); nothing is timed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lbnl import int8, native

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels cannot be built here")

#: One bf16 rounding step of a probability in [0, 1].
BF16_STEP = 2.0**-8


def _masked_softmax(x: torch.Tensor, base: int, period: int) -> torch.Tensor:
    rows, width = x.shape
    limit = base + torch.arange(rows) % period
    hidden = torch.arange(width).unsqueeze(0) > limit.unsqueeze(1)
    return torch.softmax(x.float().masked_fill(hidden, float("-inf")), dim=-1)


@pytest.mark.parametrize("rows,width,base,period", [(2 * 37, 101, 64, 37), (16, 16, 0, 16), (3, 50, 47, 1)])
def test_causal_softmax(rows: int, width: int, base: int, period: int) -> None:
    x = (torch.randn(rows, width, generator=torch.Generator().manual_seed(width)) * 6).bfloat16()
    out = native.causal_softmax(x, torch.empty_like(x), base, period)
    ref = _masked_softmax(x, base, period)
    assert float((out.float() - ref).abs().max()) <= BF16_STEP
    assert (out.float()[ref == 0] == 0).all()  # hidden keys get exactly nothing


def test_causal_softmax_int32() -> None:
    g = torch.Generator().manual_seed(1)
    acc = torch.randint(-20000, 20000, (40, 90), dtype=torch.int32, generator=g)
    rows, cols = torch.rand(40, generator=g) * 1e-3, torch.rand(90, generator=g)
    out = native.causal_softmax_int32(acc, rows, cols, torch.empty(40, 90, dtype=torch.bfloat16), 60, 20)
    ref = _masked_softmax(acc.float() * rows.unsqueeze(1) * cols, 60, 20)
    assert float((out.float() - ref).abs().max()) <= BF16_STEP


def test_int8_helpers_match_torch() -> None:
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(3, 7, 40, generator=g) * 3).bfloat16()
    inverse = torch.rand(40, generator=g) + 0.5
    for factors in (None, inverse):
        q, scale = native.quantize_rows(x, factors)
        ref_q, ref_scale = int8._quantize_rows(x if factors is None else x.float() * factors)
        assert q.shape == x.shape and scale.shape == (3, 7, 1) and torch.allclose(scale, ref_scale)
        assert int((q.int() - ref_q.int()).abs().max()) <= 1
    acc = torch.randint(-10**6, 10**6, (9, 72), dtype=torch.int32, generator=g)  # 72, 36: vector path and tail
    rs, cs = torch.rand(9, 1, generator=g) * 1e-4, torch.rand(72, generator=g) * 1e-2
    assert torch.equal(native.dequantize(acc, rs, cs), int8._dequantize(acc, rs, cs, torch.bfloat16))
    ones = torch.ones(36)
    q, scale = native.silu_mul_quantize(acc, rs, cs, ones)
    ref_q, ref_scale = int8._silu_mul_quantize(acc, rs, cs, ones, torch.bfloat16)
    assert torch.allclose(scale, ref_scale, rtol=1e-6) and int((q.int() - ref_q.int()).abs().max()) <= 1
    # oneDNN's int8 linear hands over the products times the column scales in bf16: the same bits come out
    scaled, unit = (acc.float() * cs).bfloat16(), torch.ones(72)
    assert torch.equal(native.dequantize(scaled, rs, unit), native.dequantize(acc, rs, cs))
    q16, scale16 = native.silu_mul_quantize(scaled, rs, unit, ones)
    assert torch.equal(q16, q) and torch.equal(scale16, scale)


def test_rms_norm_and_silu_product_match_the_engine() -> None:
    from lbnl.engine import _rms, _silu_mul

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 33, 4, 40, generator=g) * 3).bfloat16()
    weight = (torch.rand(40, generator=g) + 0.5).bfloat16()
    out, ref = native.rms_norm(x, weight, 1e-6), _rms(x, weight, 1e-6)
    assert out.shape == x.shape and float((out.float() - ref.float()).abs().max()) <= 2**-7 * float(ref.abs().max())
    assert (out != ref).float().mean() < 0.01  # float32 sums in another order: rarely one rounding step
    gate_up = (torch.randn(5, 7, 2 * 24, generator=g) * 2).bfloat16()
    assert torch.equal(native.silu_mul(gate_up), _silu_mul(gate_up.clone()))


def test_norm_and_rotation_in_one_pass_match_the_engine() -> None:
    from lbnl.engine import _rotate, _signed_sin

    g = torch.Generator().manual_seed(5)
    for tokens, heads, d in ((37, 16, 128), (9, 2, 40)):  # 40: halves of 20, off the 16-wide vector path
        x = (torch.randn(tokens, heads, d, generator=g) * 3).bfloat16()
        weight = (torch.rand(d, generator=g) + 0.5).bfloat16()
        angles = torch.randn(tokens, d // 2, generator=g) * 5
        emb = torch.cat([angles, angles], dim=-1)
        cos, sin = emb.cos().bfloat16(), _signed_sin(emb.sin().bfloat16())
        normed = _rotate(native.rms_norm(x, weight, 1e-6)[None], cos[None], sin[None])[0]
        assert torch.equal(native.norm_rotate(x, weight, 1e-6, cos, sin), normed)
        assert torch.equal(native.norm_rotate(x, None, 0.0, cos, sin), _rotate(x[None], cos[None], sin[None])[0])


def test_the_bf16_decoder_rotates_heads_in_one_pass(tiny_checkpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    from lbnl.checkpoints import load_checkpoint
    from lbnl.engine import _rotate, decode

    model, _ = load_checkpoint(tiny_checkpoint, dtype=torch.bfloat16, device="cpu")
    rows = [[int(t) for t in torch.randint(10, 1000, (50,), generator=torch.Generator().manual_seed(6))]]
    calls = []
    real = native.norm_rotate
    monkeypatch.setattr(native, "norm_rotate", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.inference_mode():
        fused, _, _ = decode(model.backbone, rows)
    assert len(calls) == 2 * len(model.backbone.layers)  # queries and keys of every layer

    def two_passes(x, weight, eps, cos, sin):
        normed = x if weight is None else native.rms_norm(x, weight, eps)
        return _rotate(normed[None], cos[None], sin[None])[0]

    monkeypatch.setattr(native, "norm_rotate", two_passes)
    with torch.inference_mode():
        separate, _, _ = decode(model.backbone, rows)
    assert torch.equal(fused, separate)


amx_attention = pytest.mark.skipif(not native.amx_attention_available(),
                                   reason="needs a CPU with AMX-BF16 tiles and lbnl's native kernels")


def _attention_inputs(n: int, start: int, heads: int, kv_heads: int, dim: int, spread: float = 1.0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n + 7 * start + dim)
    q = (torch.randn(n, heads, dim, generator=g) * spread).bfloat16()
    k = torch.randn(kv_heads, start + n, dim, generator=g).bfloat16()
    v = torch.randn(kv_heads, start + n, dim, generator=g).bfloat16()
    return q, k, v


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """torch's attention over the same inputs in ``dtype``: query i at position L - n + i sees keys 0..that."""
    n, total = q.shape[0], k.shape[1]
    visible = torch.ones(n, total, dtype=torch.bool).tril(total - n)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.to(dtype).transpose(0, 1).unsqueeze(0), k.to(dtype).unsqueeze(0), v.to(dtype).unsqueeze(0),
        attn_mask=visible, scale=q.shape[-1] ** -0.5, enable_gqa=True)
    return out[0].transpose(0, 1).float()


@amx_attention
@pytest.mark.parametrize("n,start,heads,kv_heads,dim", [
    (1, 0, 2, 1, 32), (31, 0, 4, 2, 64), (33, 5, 9, 3, 64), (300, 40, 16, 8, 128), (70, 600, 2, 2, 32)])
def test_causal_attention_amx_is_as_close_to_float32_as_torchs_bf16(n: int, start: int, heads: int, kv_heads: int,
                                                                     dim: int) -> None:
    q, k, v = _attention_inputs(n, start, heads, kv_heads, dim)
    got = native.causal_attention_amx(q, k, v, dim ** -0.5)
    assert got.shape == (n, heads, dim) and got.dtype == torch.bfloat16
    want = _attention(q, k, v, torch.float32)
    err = float((got.float() - want).abs().max())
    yardstick = float((_attention(q, k, v, torch.bfloat16) - want).abs().max())
    assert err <= 2 * yardstick + 1e-3, (err, yardstick)


@amx_attention
def test_causal_attention_amx_never_reads_a_later_key() -> None:
    q, k, v = _attention_inputs(80, 0, 4, 2, 64)
    before = native.causal_attention_amx(q, k, v, 0.125)
    k2, v2 = k.clone(), v.clone()
    k2[:, 50:] = 1e4
    v2[:, 50:] = -1e4
    after = native.causal_attention_amx(q, k2, v2, 0.125)
    assert torch.equal(before[:50], after[:50])  # rows 0-49 see keys 0-49 only: the same bits
    assert not torch.equal(before[50:], after[50:])


@amx_attention
def test_causal_attention_amx_takes_strided_queries_and_sharp_scores() -> None:
    # scores in the thousands (one-hot softmax rows) over three blocks of keys, and a key in the last block
    # that outscores everything before it: the running max must move late (its block's probabilities would sum
    # far past the 2^16 a stale max is kept for)
    q, k, v = _attention_inputs(45, 600, 4, 2, 32, spread=60.0)
    k[:, 560] = 20.0
    strided = q.transpose(0, 1).contiguous().transpose(0, 1)  # the engine's heads-first layout
    got = native.causal_attention_amx(strided, k, v, 32 ** -0.5)
    assert torch.equal(got, native.causal_attention_amx(q, k, v, 32 ** -0.5))
    assert got.is_contiguous()  # token-major rows, as the output projection takes them
    # keys and values as heads-first views of token-major projections (the engine's, uncopied)
    k_view, v_view = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in (k, v))
    assert not k_view.is_contiguous()
    assert torch.equal(got, native.causal_attention_amx(q, k_view, v_view, 32 ** -0.5))
    assert torch.isfinite(got.float()).all()
    assert float((got.float() - _attention(q, k, v, torch.float32)).abs().max()) <= 0.02


@amx_attention
def test_causal_attention_amx_gives_the_same_bits_on_any_number_of_threads() -> None:
    # the threads split the (head, block of positions) items, light and heavy blocks interleaved: every item
    # must still be computed exactly once, as on one thread
    q, k, v = _attention_inputs(333, 20, 9, 3, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.causal_attention_amx(q, k, v, 0.125)
        torch.set_num_threads(2)
        two = native.causal_attention_amx(q, k, v, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert float((one.float() - _attention(q, k, v, torch.float32)).abs().max()) <= 0.02


_PROBE = """#include <torch/extension.h>
int lbnl_probe() { return 7; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("probe", &lbnl_probe); }
"""

_BUILD = f"""
import os, sys
from lbnl import native
text = {_PROBE!r}
name, root = native._build_dir((), text)
os.makedirs(root, exist_ok=True)
if sys.argv[1:] == ["killed"]:
    open(os.path.join(root, "lock"), "w").close()  # torch's build lock, as a build killed midway leaves it
print(native._compile((), text).probe(), os.path.exists(os.path.join(root, "lock")))
"""


@pytest.mark.slow
def test_a_build_killed_midway_does_not_stall_the_next_one(tmp_path: Path) -> None:
    # torch waits on its lock file forever: a first build killed midway must not hang every later process
    def build(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _BUILD, *args], env={**os.environ, "TORCH_EXTENSIONS_DIR":
                              str(tmp_path)}, capture_output=True, text=True, timeout=600)

    first = build("killed")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.split() == ["7", "False"]  # built and loaded; the leftover lock is gone
    assert "compiling its native CPU kernels" in first.stderr  # a first build says so
    again = build()
    assert again.returncode == 0 and again.stdout.split() == ["7", "False"], again.stderr[-2000:]
    assert "compiling" not in again.stderr  # cached: loaded without a word
