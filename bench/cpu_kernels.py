"""The CPU kernels an LBNL forward spends its time in, one core, Qwen3-0.6B shapes (a 5,500-token prompt).

    python bench/cpu_kernels.py [--tokens 5500] [--threads 1] [--heads 16/8/128] [--attention-only]
    LBNL_MALLOC_TUNING=0 python bench/cpu_kernels.py     # the same with glibc's allocator left alone

Prints, best of 3: a bf16 linear layer (the MLP's joined gate/up projection), the same layer in int8
through each of :mod:`lbnl.int8`'s matmul backends (the integer products alone, then the whole layer with
its per-token quantization and dequantization), two elementwise
kernels over a fresh 45 MB output (exp in float32, SiLU in bf16: these pay the page faults that
:func:`lbnl.hardware.tune_allocator` avoids), and causal attention (``--heads``: 16 query heads, 8 key/value
heads of 128 by default) through torch's SDPA in bf16 and float32, through lbnl's chunked bf16 kernel and, on CPUs with
AMX, lbnl's kernel on AMX tiles, each with its largest difference from float32 SDPA. Attention TFLOP/s
count QK^T and AV over the causal pairs, as ``lbnl bench`` does.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=5500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heads", default="16/8/128",
                        help="attention's query heads / key-value heads / head size (default Qwen3-0.6B's; "
                             "lbnl-small's: 9/3/64)")
    parser.add_argument("--attention-only", action="store_true", help="skip the linear and elementwise kernels")
    args = parser.parse_args()

    import torch

    from lbnl import native
    from lbnl.attention import causal_attention_chunked
    from lbnl.int8 import MATMUL_BACKENDS, Int8Linear, onednn_available
    from lbnl.hardware import cpu_has_amx, tune_allocator

    tuned = tune_allocator()
    torch.set_num_threads(args.threads)
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = (int(x) for x in args.heads.split("/"))
    n, hidden = args.tokens, 1024

    def best(fn, reps: int = 3) -> float:
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    print(f"{torch.backends.cpu.get_cpu_capability()} CPU, AMX {cpu_has_amx()}, allocator tuned {tuned}, "
          f"{args.threads} thread(s), {n} tokens")
    if not args.attention_only:
        x = torch.randn(n, hidden, generator=gen).bfloat16()
        w = torch.randn(6 * hidden, hidden, generator=gen).bfloat16()
        seconds = best(lambda: F.linear(x, w))
        print(f"  bf16 linear {n}x{hidden} @ {hidden}x{6 * hidden}: {seconds * 1e3:8.1f} ms "
              f"{2 * n * hidden * 6 * hidden / seconds / 1e12:.3f} TFLOP/s")
        ops = 2 * n * hidden * 6 * hidden
        for backend in MATMUL_BACKENDS:
            if backend == "onednn" and not onednn_available():
                print("  int8 linear (onednn): not in this torch build")
                continue
            layer = Int8Linear(w, backend=backend)
            rows = layer.quantize(x)
            products, whole = best(lambda: layer.matmul(rows)), best(lambda: layer(x))
            print(f"  int8 linear ({backend:6s}) products {products * 1e3:8.1f} ms {ops / products / 1e12:.3f} TOP/s, "
                  f"whole layer {whole * 1e3:8.1f} ms {ops / whole / 1e12:.3f} TOP/s")
        scores = torch.randn(8, 256, n, generator=gen)
        print(f"  exp, float32, 8x256x{n}, fresh output: {best(lambda: torch.exp(scores)) * 1e3:8.1f} ms")
        gate = F.linear(x, w)
        print(f"  SiLU, bf16, {n}x{6 * hidden}, fresh output: {best(lambda: F.silu(gate)) * 1e3:8.1f} ms")

    q = torch.randn(n, heads, dim, generator=gen).bfloat16()
    k = torch.randn(kv_heads, n, dim, generator=gen).bfloat16()
    v = torch.randn(kv_heads, n, dim, generator=gen).bfloat16()
    flops = 2 * heads * dim * n * (n + 1)
    scale = dim ** -0.5
    want = F.scaled_dot_product_attention(q.float().transpose(0, 1)[None], k.float()[None], v.float()[None],
                                          is_causal=True, scale=scale, enable_gqa=True)[0].transpose(0, 1)
    # torch's kernel gets heads-first contiguous queries, its faster layout (the engine's, once a prefix is joined)
    qh, qf = q.transpose(0, 1).contiguous()[None], q.float().transpose(0, 1).contiguous()[None]
    kf, vf = k.float(), v.float()
    for name, fn in (
        ("SDPA bf16", lambda: F.scaled_dot_product_attention(qh, k[None], v[None], is_causal=True, scale=scale,
                                                             enable_gqa=True)[0].transpose(0, 1)),
        ("SDPA float32", lambda: F.scaled_dot_product_attention(qf, kf[None], vf[None], is_causal=True, scale=scale,
                                                                enable_gqa=True)[0].transpose(0, 1)),
        ("chunked bf16", lambda: causal_attention_chunked(q, k, v, scale)),
    ) + ((("AMX tiles bf16", lambda: native.causal_attention_amx(q, k, v, scale)),)
         if native.amx_attention_available() else ()):
        seconds = best(fn, reps=2)
        diff = float((fn().float() - want).abs().max())
        print(f"  attention {name:14s} {seconds * 1e3:8.1f} ms {flops / seconds / 1e12:.3f} TFLOP/s, "
              f"max |difference| from float32 SDPA {diff:.4f}")
    print(f"  (attention outputs of magnitude up to {float(want.abs().max()):.2f})")


if __name__ == "__main__":
    main()
