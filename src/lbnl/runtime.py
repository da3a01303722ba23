"""What this machine can do and process-level settings for CPU speed: the CPU's bf16 support and the C
allocator's handling of large tensors.

glibc serves every allocation above its mmap threshold (128 KB, rising to at most 32 MB) with fresh
pages and returns them to the system on free, so each large activation of a forward pass (a
5,500-token prompt's gate/up output alone is 67 MB in bf16) is page-faulted in again, page by page,
on every layer. On an AMD EPYC this made elementwise kernels 3-4x slower and a bf16 matmul 22%
slower (``docs/results.md``). :func:`tune_allocator` keeps large blocks in the heap
and freed memory in the process instead; the resident size then stays at its high-water mark,
which is what an inference process reaches on every request anyway.

Set ``LBNL_MALLOC_TUNING=0`` to leave the allocator alone (for example in a process that must hand
memory back to the system between jobs). Nothing happens on systems without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AMX or AVX512-BF16); elsewhere bf16 is emulated and slow."""
    flags = _cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles for bf16 (Intel Xeon 4th generation and later)."""
    return "amx_bf16" in _cpu_flags()


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
