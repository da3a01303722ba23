"""What the machine can do and how to run on it: device and dtype choice, CPU features, speed presets,
quantization, the attention kernel, and the C allocator's handling of large tensors.

Allocator tuning is process-wide, so the library never does it on its own: entry points that own
their process (the CLI, the server, the benchmark, a training run) call :func:`tune_allocator`.
glibc serves every allocation above its mmap threshold with fresh pages and returns them on free,
so each large activation of a forward pass is page-faulted in again on every layer (on an AMD EPYC
this made elementwise kernels several times slower: docs/results.md). Tuning keeps large blocks in
the heap; ``LBNL_MALLOC_TUNING=0`` opts out. Nothing happens on systems without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import torch
from torch import nn

from .defaults import DEFAULT_BLOCK_SIZE
from .errors import CheckpointError, InvalidInputError

# --- CPU features -------------------------------------------------------------------------------


def _torch_cpu_flag(name: str) -> bool | None:
    probe = getattr(torch.cpu, name, None)
    if probe is None:
        return None
    try:
        return bool(probe())
    except Exception:  # noqa: BLE001 - a probe that fails says nothing
        return None


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _has(torch_probe: str, cpuinfo_flag: str) -> bool:
    found = _torch_cpu_flag(torch_probe)
    return found if found is not None else cpuinfo_flag in _cpuinfo()


def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles for bf16 (Intel Xeon 4th generation and later)."""
    return _has("_is_amx_tile_supported", "amx_bf16")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AMX or AVX512-BF16); elsewhere bf16 is emulated and slow."""
    return cpu_has_amx() or _has("_is_avx512_bf16_supported", "avx512_bf16")


def cpu_has_vnni() -> bool:
    """True when this CPU multiplies int8 natively (AVX512-VNNI, AVX-VNNI or AMX-INT8): what makes
    :mod:`lbnl.int8` faster than bf16."""
    return _has("_is_vnni_supported", "vnni") or "amx_int8" in _cpuinfo()


def cpu_features() -> dict[str, Any]:
    """What torch reports of this CPU, for benchmark and log records."""
    return {"capability": torch.backends.cpu.get_cpu_capability(), "amx": cpu_has_amx(),
            "fast_bf16": cpu_has_fast_bf16(), "vnni": cpu_has_vnni(), "cores": os.cpu_count()}


# --- device and dtype ---------------------------------------------------------------------------

DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"unknown device {device!r}: {exc}") from None


def resolve_dtype(dtype: str | torch.dtype | None, checkpoint_dtype: Any, device: torch.device) -> torch.dtype:
    """Pick the compute dtype: the caller's, else the checkpoint's, float32 where the device lacks fast half precision."""
    if dtype is not None and dtype != "auto":
        if isinstance(dtype, torch.dtype):
            return dtype
        if str(dtype).lower() not in DTYPE_NAMES:
            raise CheckpointError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
        return DTYPE_NAMES[str(dtype).lower()]
    if isinstance(checkpoint_dtype, str):
        checkpoint_dtype = DTYPE_NAMES.get(checkpoint_dtype.lower(), torch.float32)
    if not isinstance(checkpoint_dtype, torch.dtype):
        checkpoint_dtype = torch.float32
    if device.type == "cpu" and checkpoint_dtype != torch.float32:
        if checkpoint_dtype == torch.float16 or not cpu_has_fast_bf16():
            return torch.float32
    return checkpoint_dtype


# --- presets and int8 ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """Named speed settings: documents per prompt and weight quantization."""

    block_size: int
    quantize: str | None = None
    description: str = ""


#: ``Reranker.from_pretrained(..., quantize=name)``: what each quantization does.
QUANTIZATIONS = {
    "int8": "int8 weights (per output channel) and int8 activations (per token) in the decoder's matmuls, "
            "int32 accumulation, except each matmul's 16 outlier input channels (calibrated on built-in rerank "
            "prompts), and attention's query-key products where heads are 128 wide or more (CPUs without AMX), "
            "everything else in the model's float dtype (lbnl.int8); fast on CPUs with VNNI and no AMX (on AMX "
            "CPUs about as fast as bf16)",
    "int8-plain": "int8 as above with no outlier channels: a little faster, scores move about twice as much",
    "int8-dynamic": "torch.ao dynamic quantization of a float32 model's linear layers (fbgemm: int8 weights, "
                    "activations quantized per tensor per call)",
}

#: Whether ``fastest`` picks :mod:`lbnl.int8` on CPUs with VNNI and AVX512-BF16 but no AMX. On since its outlier
#: channels lost at most 0.004 nDCG@10 against bf16 on SciFact and two held-out sets (docs/results.md, "int8
#: with outlier channels"); AMX CPUs keep bf16, which multiplies fast enough there that int8 was no faster
#: (docs/results.md, "Speed: Intel Xeon with AMX").
FASTEST_USES_INT8 = True

#: ``Reranker.from_pretrained(..., preset=name)``. Only ``default`` reproduces the official scores;
#: see docs/performance.md for what the others cost in speed and ranking quality.
PRESETS: dict[str, Preset] = {
    "default": Preset(DEFAULT_BLOCK_SIZE, None, "the spec: up to 125 documents per prompt, exact scores"),
    "fast": Preset(16, None, "16 documents per prompt: less attention, different scores"),
    "fastest": Preset(16, "auto", "16 documents per prompt and the fastest weights for the device: bf16 on GPUs "
                                  "and AMX CPUs, int8 matmuls on AVX512-BF16 CPUs with VNNI, int8 dynamic "
                                  "quantization on other CPUs"),
}


def preset(name: str | None) -> Preset:
    """The named preset (``None``: the spec's ``default``); a clear error for an unknown name."""
    if name is not None and name not in PRESETS:
        raise InvalidInputError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[name or "default"]


def fastest_weights(device: str | torch.device | None, dtype: str | torch.dtype | None) -> tuple[str | None, Any]:
    """``(quantize, dtype)`` of the ``fastest`` preset: bf16 where it is native (GPUs, AMX / AVX512-BF16
    CPUs; with :data:`FASTEST_USES_INT8`, :mod:`lbnl.int8` on such CPUs that have VNNI and no AMX), int8 dynamic
    quantization of a float32 model on other CPUs; an explicit ``dtype`` is kept."""
    on_cpu = resolve_device(device).type == "cpu"
    if dtype is not None:
        float32 = str(dtype).removeprefix("torch.") in ("float32", "fp32", "float")
        return ("int8-dynamic" if on_cpu and float32 else None), dtype
    if not on_cpu:
        return None, "bfloat16"
    if cpu_has_fast_bf16():
        return ("int8" if FASTEST_USES_INT8 and cpu_has_vnni() and not cpu_has_amx() else None), "bfloat16"
    return "int8-dynamic", None


def weight_plan(quantize: str | None, device: str | torch.device | None,
                dtype: str | torch.dtype | None) -> tuple[str | None, Any]:
    """``(quantize, dtype)`` to load with: ``auto`` resolved as :func:`fastest_weights`; ``int8-dynamic``
    loads float32, ``int8`` the usual dtype (bf16 where it is fast)."""
    if quantize == "auto":
        quantize, dtype = fastest_weights(device, dtype)
    if quantize == "none":
        quantize = None
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InvalidInputError(f"unknown quantization {quantize!r}; use {', '.join(QUANTIZATIONS)} or none")
    if quantize == "int8-dynamic" and dtype is None:
        dtype = "float32"
    return quantize, dtype


#: Whether :func:`quantize_int8` multiplies through oneDNN's int8 linear with packed weights (:mod:`lbnl.int8`
#: backend ``onednn``) on AMX CPUs, where ``torch._int_mm`` does not use the tiles and the packed kernel does
#: (docs/results.md, "Speed: Intel Xeon with AMX"). Other CPUs keep ``int_mm``, the backend measured there. Both
#: compute the same integer products and round them alike, so the choice never changes a score.
INT8_ONEDNN_ON_AMX = True


def int8_backend() -> str:
    """The :data:`lbnl.int8.MATMUL_BACKENDS` entry :func:`quantize_int8` uses on this CPU by default."""
    from .int8 import onednn_available

    return "onednn" if INT8_ONEDNN_ON_AMX and cpu_has_amx() and onednn_available() else "int_mm"


def quantize_model(model: Any, quantize: str | None, tokenizer: Any = None, backend: str | None = None) -> Any:
    """Apply a quantization of :data:`QUANTIZATIONS` to a loaded model, in place (``None``: nothing);
    ``int8`` calibrates its outlier channels on built-in prompts made with ``tokenizer``. ``backend``: the int8
    matmul backend (default :func:`int8_backend`)."""
    if quantize == "int8":
        if tokenizer is None:
            raise InvalidInputError("quantize='int8' needs the model's tokenizer to calibrate its outlier channels")
        from .int8 import OUTLIER_CHANNELS, calibration_rows

        return quantize_int8(model, calibration=calibration_rows(tokenizer), outliers=OUTLIER_CHANNELS,
                             backend=backend)
    if quantize == "int8-plain":
        return quantize_int8(model, backend=backend)
    if quantize == "int8-dynamic":
        return quantize_int8_dynamic(model)
    if quantize is not None:
        raise InvalidInputError(f"unknown quantization {quantize!r}; use {', '.join(QUANTIZATIONS)} or none")
    return model


def quantize_int8(model: Any, compiled: bool = True, calibration: Sequence[Sequence[int]] | None = None,
                  alpha: float | None = None, outliers: int = 0, backend: str | None = None) -> Any:
    """Run the decoder's matmuls in int8 (:mod:`lbnl.int8`: int8 weights per output channel, int8 activations
    per token), in place; the model keeps its float dtype for everything else (CPU only).

    Args:
        model: a loaded :class:`lbnl.model.LBNLModel` on the CPU.
        compiled: fuse the quantization passes with ``torch.compile`` where a C++ compiler is available
            (used only where :mod:`lbnl.native` kernels are not).
        calibration: prompts (token ids, :func:`lbnl.int8.calibration_rows` builds some from built-in text)
            whose activation ranges choose the ``outliers`` channels or, with no ``outliers``, calibrate
            SmoothQuant smoothing (channels with outliers divided down before quantizing, the weights taking
            the factor up). ``None`` (default): neither. Smoothing is opt-in because on lbnl-small-v3 it
            helped on some text and hurt on other (docs/results.md, "int8 matmuls").
        alpha: the smoothing exponent (default :data:`lbnl.int8.SMOOTHING_ALPHA`).
        outliers: input channels per matmul kept out of int8 and multiplied in the float dtype
            (``quantize="int8"`` keeps :data:`lbnl.int8.OUTLIER_CHANNELS`); needs ``calibration``.
        backend: how the int8 matmuls run (:data:`lbnl.int8.MATMUL_BACKENDS`; default :func:`int8_backend`);
            the scores are the same either way. ``onednn`` needs an AMX CPU.

    Scores move: measure the ranking quality before relying on it (docs/results.md).
    """
    from .int8 import MATMUL_BACKENDS, SMOOTHING_ALPHA, activation_ranges, convert_linears

    if model.device.type != "cpu":
        raise InvalidInputError("int8 matmuls run on the CPU only (device='cpu')")
    if not model.fast_path:
        raise InvalidInputError("int8 matmuls need a backbone lbnl's fast path runs (Llama, Mistral, Qwen2, Qwen3)")
    if outliers and not calibration:
        raise InvalidInputError("outlier channels are chosen on calibration prompts: pass calibration")
    backend = backend or int8_backend()
    if backend not in MATMUL_BACKENDS:
        raise InvalidInputError(f"unknown int8 matmul backend {backend!r}; use one of {', '.join(MATMUL_BACKENDS)}")
    if backend == "onednn" and not cpu_has_amx():
        raise InvalidInputError("int8 backend 'onednn' needs a CPU with AMX: elsewhere oneDNN's packed int8 op "
                                "fell back to a reference kernel (thousands of times slower, and saturating without "
                                "VNNI); use 'int_mm'")
    ranges = activation_ranges(model.backbone, [list(row) for row in calibration]) if calibration else None
    convert_linears(model.backbone, compiled, ranges=ranges, alpha=SMOOTHING_ALPHA if alpha is None else alpha,
                    outliers=outliers, backend=backend)
    model.quantized = "int8"
    return model


def quantize_int8_dynamic(model: Any) -> Any:
    """Replace the decoder's linear layers by int8 dynamically quantized ones, in place (CPU, float32 only).

    Weights are stored in int8 and activations quantized per call with one scale per tensor (fbgemm);
    the projector stays in float32. Slower than :func:`quantize_int8` on CPUs with fast bf16 and it
    moved scores more (docs/results.md).
    """
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise InvalidInputError("int8 dynamic quantization needs a float32 model on the CPU "
                                "(use dtype='float32', device='cpu')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(model.backbone, {nn.Linear}, dtype=torch.qint8, inplace=True)
    model.quantized = "int8-dynamic"
    return model


# --- attention kernel ---------------------------------------------------------------------------

#: ``LBNLModel.attention``: how the fast path computes causal self-attention (``int8``: the score matmul in
#: int8, :func:`lbnl.int8.causal_attention_int8`; ``auto`` picks it only for ``quantize="int8"`` models, see
#: :data:`INT8_MODELS_USE_INT8_ATTENTION`; ``amx``: :func:`lbnl.native.causal_attention_amx`, bf16 on CPUs
#: with AMX).
ATTENTION_KERNELS = ("auto", "sdpa", "chunked", "int8", "amx")

#: Whether ``auto`` gives a ``quantize="int8"`` model (on a CPU where ``auto`` picks the chunked kernel) int8
#: query-key products too, for heads of at least :data:`INT8_ATTENTION_MIN_HEAD_DIM`: on the Qwen3-0.6B shape
#: (128) they made the call faster, on lbnl-small (64) not (docs/results.md, "int8 attention and in-place outlier sums").
INT8_MODELS_USE_INT8_ATTENTION = True
INT8_ATTENTION_MIN_HEAD_DIM = 128


def resolve_attention(kernel: str, dtype: torch.dtype, device: torch.device, quantized: str | None = None,
                      head_dim: int = 0) -> str:
    """The attention kernel ``auto`` stands for: ``chunked`` for bf16 on a CPU without AMX (``int8`` there for
    ``quantized="int8"`` models whose heads have ``head_dim`` >= :data:`INT8_ATTENTION_MIN_HEAD_DIM`), ``amx``
    for bf16 on a CPU with AMX (heads a multiple of 32 wide, native kernels built), else ``sdpa``.

    Without AMX, torch's CPU flash-attention kernel multiplies bf16 no faster than float32, while the
    chunked kernel's batched matmuls run at bf16 speed; with AMX, lbnl's own flash-attention loop on AMX
    tiles beats torch's kernel (docs/results.md has both measurements). Asking for ``amx`` where it cannot
    run is an error, not a silent fallback.
    """
    if kernel not in ATTENTION_KERNELS:
        raise InvalidInputError(f"attention must be one of {', '.join(ATTENTION_KERNELS)}, got {kernel!r}")
    if kernel == "amx":
        why = _amx_attention_unavailable(dtype, device, head_dim)
        if why:
            raise InvalidInputError(f"attention='amx' cannot run here: {why}")
        return kernel
    if kernel != "auto":
        return kernel
    if dtype == torch.bfloat16 and device.type == "cpu" and cpu_has_fast_bf16() and not cpu_has_amx():
        wide = head_dim >= INT8_ATTENTION_MIN_HEAD_DIM
        return "int8" if quantized == "int8" and wide and INT8_MODELS_USE_INT8_ATTENTION else "chunked"
    if not _amx_attention_unavailable(dtype, device, head_dim):
        return "amx"
    return "sdpa"


def _amx_attention_unavailable(dtype: torch.dtype, device: torch.device, head_dim: int) -> str:
    """Why :func:`lbnl.native.causal_attention_amx` cannot run for this model ('' when it can)."""
    if dtype != torch.bfloat16 or device.type != "cpu":
        return f"it computes bf16 on a CPU (the model is {str(dtype).replace('torch.', '')} on {device.type})"
    if head_dim <= 0 or head_dim % 32:
        return f"attention heads must be a multiple of 32 wide (they are {head_dim})"
    if not cpu_has_amx():
        return "this CPU has no AMX-BF16 tiles"
    from . import native

    if not native.amx_attention_available():
        return "lbnl's native kernels are not built here or the OS refused AMX tile state (LBNL_NATIVE=0?)"
    return ""


# --- the C allocator ----------------------------------------------------------------------------

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_LOCK = threading.Lock()
_STATE: dict[str, bool] = {}


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


def tune_allocator() -> bool:
    """Keep large allocations in the heap and freed memory in the process (glibc ``mallopt``); once per
    process. Returns whether the allocator is tuned; ``LBNL_MALLOC_TUNING=0`` turns it off."""
    with _LOCK:
        if "tuned" not in _STATE:
            _STATE["tuned"] = False
            if os.environ.get("LBNL_MALLOC_TUNING", "1").strip().lower() not in ("0", "false", "no", "off"):
                libc = _libc()
                if libc is not None:
                    _STATE["tuned"] = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
                        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
        return _STATE["tuned"]


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has tuned this process's allocator."""
    return _STATE.get("tuned", False)


def release_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the system (glibc ``malloc_trim``): the resident
    size then reflects live memory again (a tuned allocator otherwise keeps its high-water mark)."""
    import gc

    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
