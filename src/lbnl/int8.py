"""W8A8 inference: int8 weights and int8 activations for the decoder's matmuls on CPUs with VNNI.

Each linear layer's weight is stored once as int8 with one scale per output channel; activations are
quantized per token (one scale per row, from its largest magnitude) on every call, multiplied with
``torch._int_mm`` (int8 x int8 -> int32, oneDNN's VNNI kernels: about 2x a bf16 matmul on an
AVX512-VNNI CPU without AMX) and scaled back to the model's dtype. On AMX CPUs ``torch._int_mm`` is slower
than a bf16 matmul, so the matmul can instead go through oneDNN's int8 linear with the weight packed once
(``backend="onednn"``, :data:`MATMUL_BACKENDS`): the same integer products, delivered times the weight's scales
in the model's dtype (half the bytes of float32, which on AMX wrote slower than the products computed). Both
backends round ``products * weight scale`` to the model's dtype before the token's scale, so their scores are
the same bits. The gated MLP quantizes once for its joined gate/up matmul and fuses the dequantization, SiLU
product and the down projection's quantization into one pass; the query, key and value projections share one
quantization of their input.

Attention can run its score matmul in int8 too (:func:`causal_attention_int8`, as in SageAttention:
keys minus their mean over tokens, which leaves the softmax unchanged, then per-token scales for
queries and keys); the probabilities times values stay in the model's dtype.

In bf16 on a CPU the elementwise passes (quantize, dequantize, the MLP's middle, the attention's
dequantization, mask and softmax) are :mod:`lbnl.native` kernels; elsewhere, or where those cannot be
built, they go through ``torch.compile`` when it works here (it needs a C++ compiler), else run eagerly;
results agree up to float rounding. The projector and every norm stay in the model's float dtype.

Two calibrated refinements read the activation ranges of a few rerank prompts (:func:`activation_ranges`):
*outlier channels* (as in LLM.int8() and QUIK, but static): the few input channels of each matmul with the
largest calibrated magnitudes are left out of the int8 product (so they no longer set every token's scale)
and multiplied in the model's float dtype beside it; and *smoothing* (SmoothQuant), which moves part of
each channel's range into the weights. Scores move: docs/results.md ("int8 matmuls") says by how much.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import native
from .prompt import build_prompt

#: Largest int8 magnitude used (symmetric quantization: -127..127, so negation is exact).
QMAX = 127.0

#: SmoothQuant's default exponent (:func:`lbnl.hardware.quantize_int8` with a calibration): how much of an
#: activation channel's range moves into the weights (0: none, 1: all); docs/results.md ("int8 matmuls").
SMOOTHING_ALPHA = 0.5

#: Input channels per matmul that ``quantize="int8"`` keeps out of int8 (:func:`convert_linears`'s ``outliers``):
#: those with the largest magnitudes over the :data:`CALIBRATION` prompts.
OUTLIER_CHANNELS = 16

#: Rerank requests whose prompts calibrate the outlier channels and the smoothing (:func:`calibration_rows`):
#: mixed English text of several kinds (general, code, man pages, history).
CALIBRATION: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What are the health effects of drinking tea every day?", (
        "Regular tea drinkers in a ten-year cohort had a lower risk of stroke than people who rarely drank tea.",
        "To brew loose-leaf tea, heat water to just below boiling and steep the leaves for three minutes.",
        "The bank raised its interest rate by a quarter point, citing persistent inflation in services.",
        "Caffeine blocks adenosine receptors, which is why a cup of tea or coffee makes people feel alert.",
        "The striker scored twice in the second half and the home side won the cup final 3-1.",
        "Polyphenols such as catechins act as antioxidants in laboratory studies; trials in people are mixed.",
    )),
    ("how do I list files sorted by modification time", (
        "ls -lt lists directory contents in long format, newest first; add -r to reverse the order.",
        "def sort_by_mtime(paths):\n    return sorted(paths, key=lambda p: p.stat().st_mtime)",
        "The find command searches a directory tree; -mtime -1 matches files changed within a day.",
        "NAME\n    stat - display file or file system status\nSYNOPSIS\n    stat [OPTION]... FILE...",
        "Our hiking trail climbs 600 metres through pine forest before reaching the lake at the summit.",
        "Returns a list containing the names of the entries in the directory given by path, in arbitrary order.",
    )),
    ("Who wrote the novel about a whale hunt, and when was it published?", (
        "Moby-Dick, Herman Melville's novel of Captain Ahab's pursuit of a white whale, appeared in 1851.",
        "Blue whales are the largest animals known to have lived; an adult can exceed 30 metres in length.",
        "The treaty was signed in 1648 and ended thirty years of war in central Europe.",
        "Photosynthesis converts light energy, water and carbon dioxide into glucose and oxygen.",
        "In 1851 the Great Exhibition opened in London's Crystal Palace, showing industry from many nations.",
        "Whaling ships from Nantucket sailed for years at a time, hunting sperm whales for their oil.",
    )),
)


#: How :class:`Int8Linear` multiplies: ``int_mm`` (``torch._int_mm``, int32 products; oneDNN re-lays the weight
#: out on every call) or ``onednn`` (``torch.ops.onednn.qlinear_pointwise`` on a weight packed once for this CPU,
#: the products times the weight's scales in the model's dtype, rounded as the other's are: the same scores).
#: ``onednn`` is for AMX CPUs only (:func:`lbnl.hardware.quantize_int8` refuses it elsewhere): with AMX masked
#: off (``ONEDNN_MAX_CPU_ISA``) oneDNN ran that op on signed int8 activations through a reference kernel
#: thousands of times slower, whose products saturated without VNNI; docs/performance.md says where each is faster.
MATMUL_BACKENDS = ("int_mm", "onednn")


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's int8 linear (``backend="onednn"``)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
    except (AttributeError, RuntimeError):
        return False


# --- elementwise kernels ------------------------------------------------------------------------


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: ``(q, scale)`` with ``x ~ q * scale``; scale is float32 [..., 1]."""
    xf = x.float()
    scale = xf.abs().amax(-1, keepdim=True).clamp_min(1e-12) / QMAX
    return torch.round(xf / scale).to(torch.int8), scale


def _scaled(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Products in float32: ``acc * col_scale`` rounded to ``dtype`` (as oneDNN delivers them), times ``row_scale``."""
    return (acc.float() * col_scale).to(dtype).float() * row_scale


def _dequantize(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, dtype: torch.dtype
                ) -> torch.Tensor:
    """Products back to ``dtype``: ``acc * col_scale`` rounded to ``dtype``, times ``row_scale``."""
    return _scaled(acc, row_scale, col_scale, dtype).to(dtype)


def _quantize_smoothed(x: torch.Tensor, inverse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_quantize_rows` of ``x * inverse`` (per-channel smoothing, see :func:`convert_linears`)."""
    return _quantize_rows(x.float() * inverse)


def _silu_mul_quantize(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, inverse: torch.Tensor,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated MLP's middle in one pass: dequantize the joined gate/up products, ``silu(gate) * up``
    rounded to ``dtype`` (as the float path computes it), smoothed by ``inverse`` and quantized per row
    for the down projection."""
    g = _scaled(acc, row_scale, col_scale, dtype)
    half = g.shape[-1] // 2
    h = (torch.nn.functional.silu(g[..., :half].to(dtype)) * g[..., half:].to(dtype)).float() * inverse
    scale = h.abs().amax(-1, keepdim=True).clamp_min(1e-12) / QMAX
    return torch.round(h / scale).to(torch.int8), scale


def _scores_softmax(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, limit: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """Attention probabilities from int32 scores: dequantized (the softmax scale is in ``row_scale``), keys
    after ``limit`` (per row) hidden, softmax in float32, stored in ``dtype``."""
    s = acc.float() * row_scale * col_scale
    cols = torch.arange(s.shape[-1], device=s.device)
    s = s.masked_fill(cols > limit, float("-inf"))
    return torch.softmax(s, dim=-1).to(dtype)


_EAGER: dict[str, Any] = {"quantize": _quantize_rows, "quantize_smoothed": _quantize_smoothed, "dequantize": _dequantize,
                          "silu_mul_quantize": _silu_mul_quantize, "scores_softmax": _scores_softmax}
_COMPILED: dict[str, Any] = {}
_STATE: dict[str, bool] = {}


def compiler_works() -> bool:
    """Whether ``torch.compile`` builds CPU kernels here (tried once per process on a tiny function)."""
    if "compile" not in _STATE:
        try:
            probe = torch.compile(lambda t: (t * 2).to(torch.int8), dynamic=True)
            _STATE["compile"] = bool(probe(torch.ones(3)).sum().item() == 6)
        except Exception:  # noqa: BLE001 - no compiler, an unsupported platform: run eagerly
            _STATE["compile"] = False
    return _STATE["compile"]


def kernel(name: str, compiled: bool = True) -> Any:
    """An elementwise kernel of the int8 path, through ``torch.compile`` when ``compiled`` and it works here.

    Should compiling fail for this kernel although the probe of :func:`compiler_works` passed (an inductor bug,
    a compiler that rejects the generated code), the kernel runs eagerly from then on, with a warning."""
    if not compiled or not compiler_works():
        return _EAGER[name]
    if name not in _COMPILED:
        _COMPILED[name] = _eager_if_compiling_fails(name, torch.compile(_EAGER[name], dynamic=True))
    return _COMPILED[name]


def _eager_if_compiling_fails(name: str, compiled: Any) -> Any:
    def run(*args: Any) -> Any:
        try:
            return compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            warnings.warn(f"lbnl: torch.compile failed on the int8 {name!r} kernel ({str(exc).splitlines()[0]}); "
                          "running it eagerly", RuntimeWarning, stacklevel=2)
            _COMPILED[name] = _EAGER[name]
            return _EAGER[name](*args)

    return run


# --- linear layers ------------------------------------------------------------------------------


_NO_ZERO_POINT = torch.zeros(1, dtype=torch.long)


@dataclass
class QuantizedRows:
    """Activations quantized per token, shared by several linear layers reading the same input: int8
    ``values`` [..., features] and float32 ``scale`` [..., 1]; with outlier channels, ``outliers``
    [..., n] holds their values in ``dtype`` (``values`` is 0 there). Indexing selects tokens of all."""

    values: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype
    outliers: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def __getitem__(self, index: Any) -> "QuantizedRows":
        return QuantizedRows(self.values[index], self.scale[index], self.dtype,
                             None if self.outliers is None else self.outliers[index])


def _native_dtype(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether :mod:`lbnl.native` computes elementwise work of this dtype and device (bf16 on a CPU, kernels built)."""
    return dtype == torch.bfloat16 and device.type == "cpu" and native.available()


def _native(x: torch.Tensor) -> bool:
    return _native_dtype(x.dtype, x.device)


def quantize_rows(x: torch.Tensor, compiled: bool = True, inverse: torch.Tensor | None = None,
                  outlier_index: torch.Tensor | None = None) -> QuantizedRows:
    """``x`` quantized per token (its last dimension), for one or more :class:`Int8Linear` layers; with
    ``inverse``, ``x * inverse`` (per-channel smoothing; 0 at outlier channels); with ``outlier_index``,
    those channels' values are kept as they are."""
    if _native(x):
        values, scale = native.quantize_rows(x, inverse)
    elif inverse is None:
        values, scale = kernel("quantize", compiled)(x)
    else:
        values, scale = kernel("quantize_smoothed", compiled)(x, inverse)
    outliers = None if outlier_index is None else x.index_select(-1, outlier_index)
    return QuantizedRows(values, scale, x.dtype, outliers)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 of a [out, in] weight: ``(int8 [out, in], float32 scale [out])``."""
    q, scale = _quantize_rows(weight.detach())
    return q.contiguous(), scale.reshape(-1).contiguous()


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (one scale per output channel) and int8 activations (one scale per
    token, computed per call); int32 accumulation, output in the float dtype of the input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, compiled: bool = True,
                 smooth: torch.Tensor | None = None, outliers: torch.Tensor | None = None, backend: str = "int_mm"):
        """``smooth`` (per input channel): the weight's columns are multiplied by it and every input divided
        by it before quantization (SmoothQuant), so channels with outliers spread over both sides.
        ``outliers`` (input channel indices): those columns stay in the weight's float dtype and their
        inputs are multiplied there, outside the int8 product and its scales. ``backend``: one of
        :data:`MATMUL_BACKENDS`."""
        super().__init__()
        if backend not in MATMUL_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(MATMUL_BACKENDS)}, got {backend!r}")
        if backend == "onednn" and not onednn_available():
            raise ValueError("backend='onednn' needs a torch built with oneDNN's int8 linear (torch.ops.onednn)")
        dtype = weight.dtype
        weight = weight.detach().float()
        if smooth is not None:
            weight = weight * smooth.float()
        inverse = None if smooth is None else (1.0 / smooth.float()).contiguous()
        if outliers is not None:
            outliers = outliers.detach().long().contiguous()
            self.register_buffer("outlier_weight", weight[:, outliers].to(dtype).contiguous())
            weight = weight.index_fill(1, outliers, 0.0)
            inverse = (torch.ones(weight.shape[1]) if inverse is None else inverse).index_fill(0, outliers, 0.0)
        else:
            self.register_buffer("outlier_weight", None)
        q, scale = quantize_weight(weight)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("qweight", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("inverse", inverse)
        self.register_buffer("outlier_index", outliers)
        self.compiled = compiled
        self.backend = backend
        # oneDNN's packed copy of ``qweight`` (an opaque layout for this CPU, so not a buffer: rebuilt, never saved)
        self.packed = torch.ops.onednn.qlinear_prepack(q, None) if backend == "onednn" else None
        self.unit = torch.ones(self.out_features) if backend == "onednn" else None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["packed"] = None  # oneDNN's opaque layout cannot be copied or pickled: packed again on arrival
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self.backend == "onednn":
            self.packed = torch.ops.onednn.qlinear_prepack(self.qweight, None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, compiled: bool = True, smooth: torch.Tensor | None = None,
                    outliers: torch.Tensor | None = None, backend: str = "int_mm") -> "Int8Linear":
        return cls(linear.weight, linear.bias, compiled, smooth, outliers, backend)

    def quantize(self, x: torch.Tensor) -> QuantizedRows:
        """``x`` quantized per token for this layer (smoothed first when the layer has a smoothing; its
        outlier channels kept aside)."""
        return quantize_rows(x, self.compiled, self.inverse, self.outlier_index)

    def matmul(self, x: QuantizedRows) -> tuple[torch.Tensor, torch.Tensor]:
        """Products [tokens, out] of already quantized rows (any leading shape, flattened) and the column scales
        still to apply to them: int32 products and the weight's scales, or with ``backend="onednn"`` the products
        times the weight's scales in the rows' dtype (float32 for other dtypes) and scales of 1."""
        values = x.values.reshape(-1, self.in_features)
        if self.packed is not None:
            dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float32) else torch.float32
            return torch.ops.onednn.qlinear_pointwise(values, 1.0, 0, self.packed, self.weight_scale, _NO_ZERO_POINT,
                                                      None, 1.0, 0, dtype, "none", [], ""), self.unit
        return torch._int_mm(values, self.qweight.t()), self.weight_scale

    def forward(self, x: torch.Tensor | QuantizedRows) -> torch.Tensor:
        rows = x if isinstance(x, QuantizedRows) else self.quantize(x)
        acc, col_scale = self.matmul(rows)
        if _native_dtype(rows.dtype, acc.device):
            out = native.dequantize(acc, rows.scale, col_scale)
        else:
            out = kernel("dequantize", self.compiled)(acc, rows.scale.reshape(-1, 1), col_scale, rows.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        if self.outlier_weight is not None:
            assert rows.outliers is not None, "rows quantized without this layer's outlier channels"
            extra = rows.outliers.reshape(-1, rows.outliers.shape[-1]).to(self.outlier_weight.dtype)
            out.addmm_(extra, self.outlier_weight.t())  # in place: a fresh sum would copy the whole output
        return out.view(*rows.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kept = 0 if self.outlier_index is None else self.outlier_index.numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"outliers={kept}, backend={self.backend}")


class Int8GatedMLP(nn.Module):
    """The SiLU-gated MLP of Llama-family models (``down(silu(gate(x)) * up(x))``) in int8: one quantization of
    ``x``, one joined gate/up matmul, dequantization, SiLU product and requantization in one pass, then down
    (with outlier channels: the gate/up output dequantized first, then the SiLU product, then down)."""

    def __init__(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear, compiled: bool = True,
                 smooth_in: torch.Tensor | None = None, smooth_mid: torch.Tensor | None = None,
                 outliers_in: torch.Tensor | None = None, outliers_mid: torch.Tensor | None = None,
                 backend: str = "int_mm"):
        super().__init__()
        self.gate_up = Int8Linear(torch.cat([gate.weight.detach(), up.weight.detach()], dim=0), None, compiled,
                                  smooth_in, outliers_in, backend)
        self.down_proj = Int8Linear.from_linear(down, compiled, smooth_mid, outliers_mid, backend)
        self.register_buffer("mid_inverse", torch.ones(down.in_features) if self.down_proj.inverse is None
                             else self.down_proj.inverse)
        self.compiled = compiled

    def forward(self, x: torch.Tensor | QuantizedRows) -> torch.Tensor:
        rows = x if isinstance(x, QuantizedRows) else self.gate_up.quantize(x)
        if self.gate_up.outlier_index is not None or self.down_proj.outlier_index is not None:
            gate_up = self.gate_up(rows)
            if _native(gate_up) and gate_up.is_contiguous():
                return self.down_proj(native.silu_mul(gate_up))
            half = gate_up.shape[-1] // 2
            return self.down_proj(torch.nn.functional.silu(gate_up[..., :half]) * gate_up[..., half:])
        acc, col_scale = self.gate_up.matmul(rows)
        if _native_dtype(rows.dtype, acc.device):
            mid, scale = native.silu_mul_quantize(acc, rows.scale, col_scale, self.mid_inverse)
        else:
            mid, scale = kernel("silu_mul_quantize", self.compiled)(acc, rows.scale.reshape(-1, 1), col_scale,
                                                                    self.mid_inverse, rows.dtype)
        return self.down_proj(QuantizedRows(mid.view(*rows.shape[:-1], -1), scale.view(*rows.shape[:-1], 1),
                                            rows.dtype))


def _gated(mlp: nn.Module) -> bool:
    parts = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    return (all(type(p) is nn.Linear for p in parts) and parts[0].bias is None and parts[1].bias is None
            and type(getattr(mlp, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation"))


@torch.no_grad()
def activation_ranges(backbone: nn.Module, rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """Largest magnitude per input channel of every linear layer of the decoder layers (float32, keyed by
    module name) over a plain forward of each row of token ids: the calibration of :func:`smoothing`."""
    ranges: dict[str, torch.Tensor] = {}
    hooks = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            seen = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(0)
            ranges[name] = torch.maximum(ranges[name], seen) if name in ranges else seen
        return hook

    for name, module in backbone.layers.named_modules():
        if type(module) is nn.Linear:
            hooks.append(module.register_forward_pre_hook(record(name)))
    device = next(backbone.parameters()).device
    try:
        for row in rows:
            backbone(input_ids=torch.tensor([list(row)], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return ranges


def calibration_rows(tokenizer: Any) -> list[list[int]]:
    """Token ids of the LBNL prompts of :data:`CALIBRATION`: what :func:`activation_ranges` reads to
    calibrate the smoothing of :func:`convert_linears`."""
    return [list(tokenizer(build_prompt(query, docs), add_special_tokens=True)["input_ids"])
            for query, docs in CALIBRATION]


def smoothing(x_range: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``max|x_j|^alpha / max|W_:j|^(1 - alpha)`` (weights sharing the
    input stacked), clamped away from 0 so that no channel is divided by a vanishing factor."""
    w_range = torch.stack([w.detach().float().abs().amax(0) for w in weights]).amax(0)
    s = x_range.clamp_min(1e-5).pow(alpha) / w_range.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp_min(1e-5)


def _fold(norm: nn.Module | None, s: torch.Tensor | None) -> torch.Tensor | None:
    """Divide an RMSNorm's weight by ``s`` (its output then arrives smoothed, at no cost per call) and return
    ``None``, or return ``s`` unchanged when there is no norm weight to fold it into."""
    weight = getattr(norm, "weight", None)
    if s is None or weight is None or not type(norm).__name__.endswith("RMSNorm"):
        return s
    with torch.no_grad():
        weight.copy_((weight.float() / s).to(weight.dtype))
    return None


def outlier_channels(x_range: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` input channels with the largest calibrated magnitudes (sorted indices)."""
    return torch.topk(x_range, min(count, x_range.numel())).indices.sort().values


def convert_linears(backbone: nn.Module, compiled: bool = True, ranges: dict[str, torch.Tensor] | None = None,
                    alpha: float = 0.5, outliers: int = 0, backend: str = "int_mm") -> int:
    """Replace the attention projections and MLP of every decoder layer of a Llama-family ``backbone`` by
    int8 ones, in place. Returns how many matmuls were converted. ``backend``: how they multiply
    (:data:`MATMUL_BACKENDS`).

    With ``ranges`` (:func:`activation_ranges`) and ``outliers`` > 0, each matmul keeps that many input
    channels (those with the largest ranges) out of int8 (:class:`Int8Linear`). With ``ranges`` and no
    ``outliers``, inputs are smoothed as in SmoothQuant (factor exponent ``alpha``): for the query/key/value
    and gate/up inputs the factors are folded into the preceding RMSNorm's weight; the output and down
    projections divide their input when quantizing it.
    """
    if outliers < 0:
        raise ValueError("outliers must be >= 0")
    if outliers and ranges is None:
        raise ValueError("outlier channels are chosen from calibrated ranges: pass ranges")
    converted = 0
    for i, layer in enumerate(backbone.layers):
        attn, mlp = layer.self_attn, layer.mlp

        def factors(prefix: str, module: nn.Module, names: list[str]) -> torch.Tensor | None:
            key = f"{i}.{prefix}.{names[0]}"
            if ranges is None or key not in ranges or outliers:
                return None
            return smoothing(ranges[key], [getattr(module, n).weight for n in names], alpha)

        def kept(prefix: str, name: str) -> torch.Tensor | None:
            key = f"{i}.{prefix}.{name}"
            if not outliers or ranges is None or key not in ranges:
                return None
            return outlier_channels(ranges[key], outliers)

        qkv = ["q_proj", "k_proj", "v_proj"]
        if all(type(getattr(attn, n, None)) is nn.Linear for n in qkv):
            s = factors("self_attn", attn, qkv)
            folded = s is not None and _fold(layer.input_layernorm, s) is None
            index = kept("self_attn", qkv[0])  # the three share one input, so one choice of channels
            made = [Int8Linear.from_linear(getattr(attn, n), compiled, s, index, backend) for n in qkv]
            for name, linear in zip(qkv, made):
                # one quantization serves all three
                linear.inverse = None if folded and index is None else made[0].inverse
                linear.outlier_index = made[0].outlier_index
                setattr(attn, name, linear)
            converted += 3
        if type(getattr(attn, "o_proj", None)) is nn.Linear:
            attn.o_proj = Int8Linear.from_linear(attn.o_proj, compiled, factors("self_attn", attn, ["o_proj"]),
                                                 kept("self_attn", "o_proj"), backend)
            converted += 1
        if _gated(mlp):
            s = factors("mlp", mlp, ["gate_proj", "up_proj"])
            folded = s is not None and _fold(layer.post_attention_layernorm, s) is None
            layer.mlp = Int8GatedMLP(mlp.gate_proj, mlp.up_proj, mlp.down_proj, compiled, s,
                                     factors("mlp", mlp, ["down_proj"]), kept("mlp", "gate_proj"),
                                     kept("mlp", "down_proj"), backend)
            if folded:
                layer.mlp.gate_up.inverse = None
            converted += 2
        else:
            for name, child in list(mlp.named_children()):
                if type(child) is nn.Linear:
                    setattr(mlp, name, Int8Linear.from_linear(child, compiled, None, kept("mlp", name), backend))
                    converted += 1
    return converted


def shared_input(attn: nn.Module, x: torch.Tensor) -> torch.Tensor | QuantizedRows:
    """The input of an attention block's query, key and value projections: quantized once when all three are
    :class:`Int8Linear`, else ``x`` itself."""
    projections = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj")]
    if all(isinstance(p, Int8Linear) for p in projections) and all(
            p.inverse is projections[0].inverse and p.outlier_index is projections[0].outlier_index
            for p in projections):
        return projections[0].quantize(x)
    return x


# --- attention ----------------------------------------------------------------------------------

#: Query rows per block of :func:`causal_attention_int8`, and the int32 scores it holds at most.
INT8_BLOCK = 128
INT8_SCORES = 1 << 25


def causal_attention_int8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                          compiled: bool = True) -> torch.Tensor:
    """Causal attention like :func:`lbnl.attention.causal_attention_chunked` (same layouts and arguments), with
    the query-key products in int8: keys minus their mean over tokens (a constant per query row, which the
    softmax cancels), queries and keys quantized per token, int32 products dequantized, masked and
    softmaxed (float32 inside) in one pass; the probabilities times values in the input dtype."""
    n, heads, dim = q.shape
    kv_heads, total, _ = k.shape
    group = heads // kv_heads
    start = total - n
    block = max(16, min(INT8_BLOCK, INT8_SCORES // max(1, group * total)))
    fused = _native(q)
    if fused:  # centred in bf16 (a rounding far below int8's), quantized natively: no float32 copy of the keys
        kq, kscale = native.quantize_rows(k - k.mean(dim=1, keepdim=True, dtype=torch.float32).to(k.dtype))
    else:
        kf = k.float()
        kq, kscale = kernel("quantize", compiled)(kf - kf.mean(dim=1, keepdim=True))
    kscale = kscale.transpose(1, 2).contiguous()  # [kv_heads, 1, total]
    grouped = q.reshape(n, kv_heads, group, dim)
    v = v.contiguous()
    out = q.new_empty(kv_heads, group, n, dim)  # heads first, as the bf16 kernel
    softmax = kernel("scores_softmax", compiled)
    quantize = native.quantize_rows if fused else kernel("quantize", compiled)
    rows = torch.arange(block, device=q.device)
    probs = q.new_empty(group * block * total)
    for s in range(0, n, block):
        e = min(n, s + block)
        c, width = e - s, start + e
        qq, qscale = quantize(grouped[s:e].permute(1, 2, 0, 3).reshape(kv_heads, group * c, dim))
        qscale = qscale * scale
        limit = None if fused else (rows[:c] + (start + s)).repeat(group).unsqueeze(-1)
        for h in range(kv_heads):
            acc = torch._int_mm(qq[h], kq[h, :width].t())
            if fused:
                p = native.causal_softmax_int32(acc, qscale[h].reshape(-1), kscale[h, 0],
                                                probs[: group * c * width].view(group * c, width), start + s, c)
            else:
                p = softmax(acc, qscale[h], kscale[h, :, :width], limit, q.dtype)
            out[h, :, s:e].copy_(torch.mm(p, v[h, :width]).view(group, c, dim))
    return out.view(heads, n, dim).transpose(0, 1)
