"""The machine's measured matmul peaks: the denominator of every path's fraction of peak.

Peaks are measured, not taken from a data sheet, so the fraction says how much of what this
machine (its threads, its torch build, its bf16 and int8 support) can do a path achieves.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_peaks(cap_seconds: float = 20.0, head_dim: int = 128) -> dict[str, Any]:
    """Best matmul throughput of this machine in TFLOP/s: float32 and bfloat16 (2048^2, or 512^2 when bf16 is
    emulated, under a time cap) and int8 dynamically quantized linear layers (2048 x 1024 x 3072); with the
    attention kernel ``auto`` picks for bf16 heads ``head_dim`` wide."""
    import torch

    from ..hardware import cpu_has_fast_bf16, resolve_attention

    def best(fn: Callable[[], Any], flops: float, reps: int = 5, cap: float = cap_seconds,
             settle: float = 0.5) -> float:
        """The fastest of at least ``reps`` runs, run for at least ``settle`` seconds and at most ``cap``: a
        product of a few milliseconds timed only a few times reads a shared core's speed of that moment."""
        fn()
        fastest, began, runs = float("inf"), time.perf_counter(), 0
        while runs < reps or time.perf_counter() - began < settle:
            start = time.perf_counter()
            fn()
            fastest = min(fastest, time.perf_counter() - start)
            runs += 1
            if time.perf_counter() - began > cap:
                break
        return flops / fastest / 1e12

    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"cpu": _cpu_name(), "threads": torch.get_num_threads(),
                           "fast_bf16": bool(cpu_has_fast_bf16()) or torch.cuda.is_available(),
                           "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "bf16_attention": resolve_attention("auto", torch.bfloat16, torch.device("cpu"), None,
                                                               head_dim)}
    with torch.inference_mode():
        n = 2048
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        out["fp32_tflops"] = round(best(lambda: a @ b, 2 * n**3), 4)
        m = n if out["fast_bf16"] else 512
        a16, b16 = a[:m, :m].bfloat16(), b[:m, :m].bfloat16()
        out["bf16_tflops"] = round(best(lambda: a16 @ b16, 2 * m**3), 4)
        out["bf16_size"] = m
        out["int8_linear_tflops"] = _int8_peak(best, gen)
    out["best_tflops"] = max(out["fp32_tflops"], out["bf16_tflops"])
    out["best_dtype"] = "float32" if out["fp32_tflops"] >= out["bf16_tflops"] else "bfloat16"
    return out


def _int8_peak(best: Callable[..., float], gen: Any) -> float | None:
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(torch.nn.Linear(1024, 3072, bias=False)), {torch.nn.Linear}, dtype=torch.qint8)
        x = torch.randn(2048, 1024, generator=gen)
        return round(best(lambda: layer(x), 2 * 2048 * 1024 * 3072), 4)
    except Exception:  # noqa: BLE001 - a build without fbgemm simply has no int8 figure
        return None
