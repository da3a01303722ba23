"""Whole rerank calls with the native kernels of an earlier revision against today's, alternating in one process.

    python bench/amx_attention_ab.py --base 974ff75 [--model PATH | --shape qwen3-0.6b] [--workload 1x20x256]
                                     [--data $SCIFACT] [--pairs 8] [--threads 1] [--kernel-only 5500]

A kernel change of a few percent is lost in the drift of a shared machine (up to 10% between runs minutes
apart), so this runs both in one process, one call each in turn (the order flipping every pair), on the same
model, text and allocator: the earlier revision's ``lbnl.native`` source is compiled under its own name. A base
with today's kernel interface (session 14 on: keys and values as strided views, output token-major) replaces
every native kernel for its calls (attention, norms, rotation, SiLU product); an older base (session 13) only
its AMX attention kernel, called as the engine called it then (keys and values copied to contiguous tensors,
output heads-first and copied to token-major by the output projection's reshape). Prints each call's seconds,
the ratio of the best calls, the median ratio of the pairs and the largest score difference between the two.
With ``--kernel-only N`` it times the AMX attention kernel alone instead, on random queries, keys and values of
the model's head shape at N tokens (the same inputs for both), and prints the largest difference of the outputs.
Needs a CPU with AMX and ``git`` (for the base's source).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any, Callable


def _base(revision: str) -> tuple[Any, Callable[..., Any] | None]:
    """``revision``'s compiled native kernels, and for a session-13 base its attention kernel with the engine's
    copies of that time (``None`` when the base takes today's interface)."""
    from lbnl import native

    text = subprocess.run(["git", "show", f"{revision}:src/lbnl/native.py"], check=True, capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent).stdout
    source = text.split('_SOURCE = r"""', 1)[1].split('"""', 1)[0]
    module = native._compile(native._OPENMP, source)
    if "torch::empty({n, heads, dim}" in source:  # writes token-major: today's interface
        return module, None

    def kernel(q: Any, k: Any, v: Any, scale: float) -> Any:
        n, heads, dim = q.shape
        out = module.causal_attention_amx(q, k.contiguous(), v.contiguous(), scale)
        return out.view(heads, n, dim).transpose(0, 1)
    return module, kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision whose native kernels are the baseline")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: --shape's random checkpoint)")
    parser.add_argument("--shape", default="qwen3-0.6b", help="random checkpoint shape when --model is not given")
    parser.add_argument("--workload", default="1x20x256")
    parser.add_argument("--data", default=None, help="BEIR directory for the text (default: synthetic)")
    parser.add_argument("--pairs", type=int, default=8, help="timed calls of each kernel (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kernel-only", type=int, default=0, metavar="N",
                        help="time the attention kernel alone on random heads at N tokens instead of whole calls")
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
    base_module, base_attention = _base(args.base)
    today_module, today_attention = native.module(), native.causal_attention_amx
    model = Path(args.model) if args.model else bench_checkpoint(args.shape, cache_root() / "bench")
    if args.kernel_only:
        base_kernel = base_attention or base_module.causal_attention_amx
        _kernel_only(model, args.kernel_only, args.pairs, base_kernel, today_module.causal_attention_amx)
        return
    workload = parse_workload(args.workload)
    reranker = Reranker.from_pretrained(model, device="cpu", dtype="bfloat16", fusion=None)
    reranker.model.attention = "amx"
    queries, docs, _ = build_inputs(workload, reranker.tokenizer, Path(args.data) if args.data else None)
    seconds: dict[str, list[float]] = {"base": [], "today": []}
    scores: dict[str, list[float]] = {}
    for pair in range(args.pairs + 1):
        for name in ("base", "today") if pair % 2 == 0 else ("today", "base"):
            old = name == "base"
            native._STATE["module"] = base_module if old and base_attention is None else today_module
            native.causal_attention_amx = base_attention if old and base_attention else today_attention
            start = time.perf_counter()
            lists = reranker.score_lists(queries, docs, max_doc_length=workload.tokens)
            if pair:  # the first pair warms both up
                seconds[name].append(time.perf_counter() - start)
            scores[name] = [float(s) for scored in lists for s in scored.scores]
    native._STATE["module"], native.causal_attention_amx = today_module, today_attention
    print(f"base / today: {_ratios(seconds, 's', 1.0, 'best calls')}; largest score "
          f"difference {max(abs(a - b) for a, b in zip(scores['base'], scores['today'])):.4f}")


def _ratios(seconds: dict[str, list[float]], unit: str, scale: float, best: str) -> str:
    """Print each side's timings (times ``scale``, in ``unit``); return the ratios of the best and of the pairs."""
    for name, times in seconds.items():
        print(f"{name:6s} " + " ".join(f"{t * scale:.2f}" for t in times) + f" {unit}")
    ratios = sorted(b / t for b, t in zip(seconds["base"], seconds["today"]))
    return (f"{best} {min(seconds['base']) / min(seconds['today']):.3f}x, median of the pairs "
            f"{ratios[len(ratios) // 2]:.3f}x (lowest {ratios[0]:.3f}, highest {ratios[-1]:.3f})")


def _kernel_only(model: Path, tokens: int, pairs: int, base: Callable[..., Any], today: Callable[..., Any]) -> None:
    """The two attention kernels alone, alternating, on random heads of ``model``'s shape at ``tokens`` tokens."""
    import torch
    from transformers import AutoConfig

    from lbnl.bench.flops import DecoderShape

    shape = DecoderShape.from_config(AutoConfig.from_pretrained(model))
    heads, kv_heads, dim = shape.heads, shape.kv_heads, shape.head_dim
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(tokens, heads, dim, generator=gen).bfloat16()
    k, v = (torch.randn(kv_heads, tokens, dim, generator=gen).bfloat16() for _ in range(2))
    kernels = {"base": base, "today": today}
    seconds: dict[str, list[float]] = {"base": [], "today": []}
    outputs: dict[str, Any] = {}
    for pair in range(pairs + 1):
        for name in ("base", "today") if pair % 2 == 0 else ("today", "base"):
            start = time.perf_counter()
            outputs[name] = kernels[name](q, k, v, dim ** -0.5)
            if pair:
                seconds[name].append(time.perf_counter() - start)
    summary = _ratios(seconds, "ms", 1e3, "best")
    difference = (outputs["base"].float() - outputs["today"].float()).abs().max().item()
    print(f"{heads} heads ({kv_heads} for keys and values) of {dim} at {tokens} tokens; base / today: {summary}; "
          f"largest output difference {difference:.3g}")


if __name__ == "__main__":
    main()
