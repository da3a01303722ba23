"""What this CPU's AMX tiles sustain, next to torch's bf16 matmul: the physical ceiling above the bench's peak.

    taskset -c 1 python bench/amx_tiles.py [--groups 200000]

Runs groups of four bf16 tile products (the 2x2 blocking of lbnl's AMX attention kernel and of oneDNN's: four
16x16 float accumulators, two A tiles of 16 rows, two B tiles of 16 columns, 32 dims per product; 65,536 FLOPs per
group) in a tight loop on one core, timed with the time-stamp counter, in these patterns:

* products alone (no memory);
* four tile loads and four products per group, the operands cycling through 32 KB (L1), 256 KB (L2) or 8 MB;
* with drains: every 32 or 16 groups the accumulators stored and zeroed (a matmul block over 1,024 or 512 dims),
  and the attention kernel's jobs: every 4 groups the accumulators stored and zeroed (a block of scores), or
  every 8 groups loaded from and stored back to one of 16 blocks (a block of the output).

Prints TSC cycles per group and the rate that is, next to torch's bf16 matmul at 2048^3 (the bench's peak). Needs
a CPU with AMX-BF16 and a C++ compiler (the kernels are built like ``lbnl.native``'s).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

_SOURCE = r"""
#include <torch/extension.h>
#include <immintrin.h>
#include <x86intrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstdlib>
#include <cstring>

namespace {
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
#define LOAD(tile, base, stride) \
  asm volatile("tileloadd (%0,%1,1), %%tmm" #tile : : "r"(base), "r"(static_cast<long>(stride)) : "memory")
#define STORE(tile, base, stride) \
  asm volatile("tilestored %%tmm" #tile ", (%0,%1,1)" : : "r"(base), "r"(static_cast<long>(stride)) : "memory")
#define ZERO(tile) asm volatile("tilezero %%tmm" #tile : : : "memory")
#define DOT(c, a, b) asm volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c : : : "memory")
}  // namespace

bool ready() { return syscall(SYS_arch_prctl, 0x1023, 18) == 0; }

// TSC cycles per group of four products. loads: 0 none, else the operands cycle through `span` bytes (two
// buffers of span / 2: A and B). drain: 0 none, 1 store the accumulators to one 4 KB block and zero them every
// `every` groups, 2 load them from one of 16 blocks (64 KB) before and store them back after every `every` groups.
double groups(int64_t count, int64_t loads, int64_t span, int64_t drain, int64_t every) {
  TORCH_CHECK(ready(), "the OS does not let this process use AMX tiles");
  TileConfig config;
  for (int t = 0; t < 8; ++t) { config.rows[t] = 16; config.colsb[t] = 64; }
  asm volatile("ldtilecfg %0" : : "m"(config));
  const int64_t half = std::max<int64_t>(span / 2, 2048), steps = half / 2048;
  auto* a = static_cast<uint16_t*>(std::aligned_alloc(64, half));
  auto* b = static_cast<uint16_t*>(std::aligned_alloc(64, half));
  auto* c = static_cast<float*>(std::aligned_alloc(64, 16 * 4096));
  for (int64_t i = 0; i < half / 2; ++i) { a[i] = 0x3F80 + (i % 7); b[i] = 0x3F80 - (i % 5); }  // about 1.0
  std::memset(c, 0, 16 * 4096);
  ZERO(0); ZERO(1); ZERO(2); ZERO(3);
  const uint64_t start = __rdtsc();
  for (int64_t g = 0; g < count; ++g) {
    const int64_t block = drain ? g / every : 0;
    float* cb = c + (drain == 2 ? block % 16 : 0) * 1024;
    if (drain == 2 && g % every == 0) {
      LOAD(0, cb, 128); LOAD(1, cb + 16, 128); LOAD(2, cb + 512, 128); LOAD(3, cb + 528, 128);
    }
    if (loads) {
      const int64_t at = (g % steps) * 1024;  // 2 KB per step and buffer: two 1 KB tiles
      LOAD(4, a + at, 64); LOAD(5, a + at + 512, 64); LOAD(6, b + at, 64); LOAD(7, b + at + 512, 64);
    }
    DOT(0, 4, 6); DOT(1, 4, 7); DOT(2, 5, 6); DOT(3, 5, 7);
    if (drain && g % every == every - 1) {
      STORE(0, cb, 128); STORE(1, cb + 16, 128); STORE(2, cb + 512, 128); STORE(3, cb + 528, 128);
      if (drain == 1) { ZERO(0); ZERO(1); ZERO(2); ZERO(3); }
    }
  }
  const uint64_t end = __rdtsc();
  asm volatile("tilerelease" : : : "memory");
  std::free(a); std::free(b); std::free(c);
  return static_cast<double>(end - start) / count;
}

uint64_t tsc() { return __rdtsc(); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ready", &ready);
  m.def("groups", &groups);
  m.def("tsc", &tsc);
}
"""

#: (name, loads, span in bytes, drain, every)
PATTERNS = [
    ("products alone", 0, 0, 0, 1),
    ("loads + products, operands in 32 KB (L1)", 1, 32 << 10, 0, 1),
    ("loads + products, operands in 256 KB (L2)", 1, 256 << 10, 0, 1),
    ("loads + products, operands in 8 MB", 1, 8 << 20, 0, 1),
    ("L2 operands, store + zero every 32 groups (a matmul block 1,024 deep)", 1, 256 << 10, 1, 32),
    ("L2 operands, store + zero every 16 groups (512 deep)", 1, 256 << 10, 1, 16),
    ("L2 operands, store + zero every 4 groups (score blocks)", 1, 256 << 10, 1, 4),
    ("L2 operands, load + store of 16 blocks every 8 groups (output blocks)", 1, 256 << 10, 2, 8),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=200_000, help="groups of four products per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per pattern (the best is printed)")
    args = parser.parse_args()

    import torch

    from lbnl import native

    if not native.amx_attention_available():
        raise SystemExit("no AMX-BF16 tiles here: this CPU has none, the OS refuses this process tile state, or "
                         "lbnl's native kernels could not be built (see the warning above)")
    tiles = native._compile(native._OPENMP, _SOURCE)
    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), tiles.tsc()
    time.sleep(0.5)
    hz = (tiles.tsc() - c0) / (time.perf_counter() - t0)
    flops = 4 * 2 * 16 * 16 * 32
    print(f"TSC {hz / 1e9:.3f} GHz; one group = four 16x16x32 bf16 products = {flops} FLOPs")
    print(f"{'pattern':72s} {'cycles/group':>12s} {'TFLOP/s':>8s}")
    for name, loads, span, drain, every in PATTERNS:
        cycles = min(tiles.groups(args.groups, loads, span, drain, every) for _ in range(args.repeats))
        print(f"{name:72s} {cycles:12.1f} {flops * hz / cycles / 1e12:8.3f}")
    n = 2048
    a, b = torch.randn(n, n).bfloat16(), torch.randn(n, n).bfloat16()
    with torch.inference_mode():
        a @ b
        began, best = time.perf_counter(), float("inf")
        while time.perf_counter() - began < 1.0:  # the best over a second
            best = min(best, _timed(lambda: a @ b))
    print(f"{'torch bf16 matmul 2048^3 (the bench peak)':72s} {'':12s} {2 * n**3 / best / 1e12:8.3f}")


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
