"""Whole rerank calls with the AMX attention kernel of an earlier revision against today's, alternating in one process.

    python bench/amx_attention_ab.py --base 974ff75 [--model PATH | --shape qwen3-0.6b] [--workload 1x20x256]
                                     [--data $SCIFACT] [--pairs 8] [--threads 1]

A kernel change of a few percent is lost in the drift of a shared machine (up to 10% between runs minutes
apart), so this runs both kernels in one process, one call each in turn (the order flipping every pair), on
the same model, text and allocator: the earlier revision's ``lbnl.native`` source is compiled under its own
name and called as the engine called it at the time of session 13 (keys and values copied to contiguous
tensors, output heads-first and copied to token-major by the output projection's reshape), today's through
the engine as it is. Prints each call's seconds, the ratio of the best calls, the median ratio of the pairs
and the largest score difference between the two. Needs a CPU with AMX and ``git`` (for the base's source).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any, Callable


def _base_kernel(revision: str) -> Callable[..., Any]:
    """``causal_attention_amx`` of ``revision``'s native source, with the engine's copies of that time."""
    from lbnl import native

    text = subprocess.run(["git", "show", f"{revision}:src/lbnl/native.py"], check=True, capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent).stdout
    module = native._compile(native._OPENMP, text.split('_SOURCE = r"""', 1)[1].split('"""', 1)[0])

    def kernel(q: Any, k: Any, v: Any, scale: float) -> Any:
        n, heads, dim = q.shape
        out = module.causal_attention_amx(q, k.contiguous(), v.contiguous(), scale)
        return out.view(heads, n, dim).transpose(0, 1)
    return kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision whose AMX attention kernel is the baseline")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: --shape's random checkpoint)")
    parser.add_argument("--shape", default="qwen3-0.6b", help="random checkpoint shape when --model is not given")
    parser.add_argument("--workload", default="1x20x256")
    parser.add_argument("--data", default=None, help="BEIR directory for the text (default: synthetic)")
    parser.add_argument("--pairs", type=int, default=8, help="timed calls of each kernel (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from lbnl import Reranker, native
    from lbnl.bench import build_inputs, parse_workload
    from lbnl.bench.runner import bench_checkpoint
    from lbnl.checkpoints.bases import cache_root
    from lbnl.hardware import tune_allocator

    if not native.amx_attention_available():
        raise SystemExit("this CPU (or build) has no AMX attention kernel to compare")
    tune_allocator()
    torch.set_num_threads(args.threads)
    kernels = {"base": _base_kernel(args.base), "today": native.causal_attention_amx}
    model = Path(args.model) if args.model else bench_checkpoint(args.shape, cache_root() / "bench")
    workload = parse_workload(args.workload)
    reranker = Reranker.from_pretrained(model, device="cpu", dtype="bfloat16", fusion=None)
    reranker.model.attention = "amx"
    queries, docs, _ = build_inputs(workload, reranker.tokenizer, Path(args.data) if args.data else None)
    seconds: dict[str, list[float]] = {"base": [], "today": []}
    scores: dict[str, list[float]] = {}
    for pair in range(args.pairs + 1):
        for name in ("base", "today") if pair % 2 == 0 else ("today", "base"):
            native.causal_attention_amx = kernels[name]
            start = time.perf_counter()
            lists = reranker.score_lists(queries, docs, max_doc_length=workload.tokens)
            if pair:  # the first pair warms both up
                seconds[name].append(time.perf_counter() - start)
            scores[name] = [float(s) for scored in lists for s in scored.scores]
    native.causal_attention_amx = kernels["today"]
    ratios = sorted(b / t for b, t in zip(seconds["base"], seconds["today"]))
    for name, times in seconds.items():
        print(f"{name:6s} " + " ".join(f"{t:.2f}" for t in times) + " s")
    print(f"base / today: best calls {min(seconds['base']) / min(seconds['today']):.3f}x, median of the pairs "
          f"{ratios[len(ratios) // 2]:.3f}x (lowest {ratios[0]:.3f}, highest {ratios[-1]:.3f}); largest score "
          f"difference {max(abs(a - b) for a, b in zip(scores['base'], scores['today'])):.4f}")


if __name__ == "__main__":
    main()
