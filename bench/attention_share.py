"""Where a rerank call's time goes: attention's share, and the other kernels', timed inside the call.

    python bench/attention_share.py [--model PATH | --shape qwen3-0.6b] [--workload 1x20x256]
                                    [--attention amx,sdpa] [--data $SCIFACT] [--threads 1] [--quantize int8]

For each attention kernel (``LBNLModel.attention``), runs the workload's rerank call once to warm up and then
twice, timing every call of the kernel inside the call (the per-layer causal attention, and torch's SDPA where
the fast path keeps it, e.g. the last layer's few read positions), of the linear layers and of the native
norm, rotation and SiLU-product kernels (with ``--quantize int8``: of the int8 matmuls, the quantization and
scaling-back passes and the outlier channels' bf16 products instead of the linear layers). Prints the best
call's total seconds, the attention seconds and their TFLOP/s (query-key and value products over the visible
pairs), the other kernels' seconds, and what is left (residual adds, concatenations, the prompt's shared head,
Python). The same workload text as ``lbnl bench``.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable


def _timed(table: dict[str, float], pairs: dict[str, float], name: str, fn: Callable[..., Any],
           visible: Callable[..., tuple[int, int, int]]) -> Callable[..., Any]:
    """``fn`` that adds its seconds to ``table[name]`` and its (heads x visible query-key pairs) to ``pairs``."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        table[name] += time.perf_counter() - start
        heads, queries, keys = visible(*args)
        pairs[name] += heads * (queries * (keys - queries) + queries * (queries + 1) / 2)
        return out
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: --shape's random checkpoint)")
    parser.add_argument("--shape", default="qwen3-0.6b", help="random checkpoint shape when --model is not given")
    parser.add_argument("--workload", default="1x20x256")
    parser.add_argument("--attention", default="amx,sdpa", help="comma-separated kernels (LBNLModel.attention)")
    parser.add_argument("--data", default=None, help="BEIR directory for the text (default: synthetic)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quantize", default=None, help="the model's quantize= (e.g. int8; default: none)")
    args = parser.parse_args()

    import torch

    from lbnl import Reranker, int8, native
    from lbnl import attention as kernels
    from lbnl.bench import build_inputs, parse_workload
    from lbnl.bench.runner import bench_checkpoint
    from lbnl.checkpoints.bases import cache_root
    from lbnl.hardware import tune_allocator
    from lbnl.model import config_head_dim

    tune_allocator()
    torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else bench_checkpoint(args.shape, cache_root() / "bench")
    workload = parse_workload(args.workload)
    seconds: dict[str, float] = defaultdict(float)
    pairs: dict[str, float] = defaultdict(float)
    token_layout = lambda q, k, *rest: (q.shape[1], q.shape[0], k.shape[1])  # noqa: E731
    torch_layout = lambda q, k, *rest: (q.shape[1], q.shape[2], k.shape[2])  # noqa: E731
    native.causal_attention_amx = _timed(seconds, pairs, "amx", native.causal_attention_amx, token_layout)
    kernels.causal_attention_chunked = _timed(seconds, pairs, "chunked", kernels.causal_attention_chunked, token_layout)
    F = torch.nn.functional
    F.scaled_dot_product_attention = _timed(seconds, pairs, "sdpa", F.scaled_dot_product_attention, torch_layout)
    others: dict[str, float] = defaultdict(float)
    no_pairs = lambda *args: (0, 0, 0)  # noqa: E731
    F.linear = _timed(others, defaultdict(float), "linear", F.linear, no_pairs)
    for name in ("rms_norm", "norm_rotate", "silu_mul", "quantize_rows", "dequantize", "silu_mul_quantize"):
        setattr(native, name, _timed(others, defaultdict(float), name, getattr(native, name), no_pairs))
    int8.Int8Linear.matmul = _timed(others, defaultdict(float), "int8 matmul", int8.Int8Linear.matmul, no_pairs)
    torch.Tensor.addmm_ = _timed(others, defaultdict(float), "outlier products", torch.Tensor.addmm_, no_pairs)
    for kernel in [k.strip() for k in args.attention.split(",") if k.strip()]:
        reranker = Reranker.from_pretrained(model, device="cpu", dtype="bfloat16", fusion=None, quantize=args.quantize)
        reranker.model.attention = kernel
        config = reranker.model.config
        dim = config_head_dim(config)
        queries, docs, _ = build_inputs(workload, reranker.tokenizer, Path(args.data) if args.data else None)
        call = lambda: reranker.rerank_many(queries, docs, max_doc_length=workload.tokens)  # noqa: E731
        call()
        best: tuple[float, dict[str, float], dict[str, float]] | None = None
        for _ in range(2):
            for table in (seconds, pairs, others):
                table.clear()
            start = time.perf_counter()
            call()
            total = time.perf_counter() - start
            if best is None or total < best[0]:
                best = (total, dict(seconds), dict(pairs), dict(others))
        total, spent, seen, other = best
        parts = ", ".join(f"{name} {s:.2f} s ({4 * dim * seen[name] / s / 1e12:.2f} TFLOP/s)"
                          for name, s in sorted(spent.items()))
        rest = ", ".join(f"{name} {s:.2f} s" for name, s in sorted(other.items()))
        left = total - sum(spent.values()) - sum(other.values())
        print(f"{kernel:8s} call {total:.2f} s; attention: {parts}; {rest}; the rest {left:.2f} s")


if __name__ == "__main__":
    main()
