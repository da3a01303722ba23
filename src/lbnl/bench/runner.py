"""Running the bench: every path on every workload, timed interleaved, compared with the reference.

One run loads one checkpoint, builds the same inputs for every path and times the paths
interleaved (repeat 1 of every path, then repeat 2, ...), so a change in machine load hits all of
them alike; each path's time is its fastest repeat (other processes can only slow a call down).

Every path runs in one process, so they share its C allocator: the bench tunes it first, as lbnl
does when a reranker is created (:mod:`lbnl.hardware`), and the reference paths profit from that too;
``LBNL_MALLOC_TUNING=0`` measures everything with the allocator untouched.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidInputError
from .flops import DecoderShape, prompt_lengths
from .loader import Loader
from .memory import RssPeak, mem_available, rss
from .paths import PathSpec
from .peaks import measure_peaks
from .workloads import Workload, build_inputs

#: Random checkpoints ``--shape`` builds (real Qwen3 tokenizer, random weights).
SHAPES = ("tiny", "qwen3-0.6b")
#: A path whose estimated time for one call exceeds this is skipped (the estimate assumes half of peak).
DEFAULT_TIME_CAP = 1800.0
ASSUMED_EFFICIENCY = 0.5


@dataclass
class PathResult:
    """Measurements of one path on one workload."""

    path: str
    description: str
    status: str = "ok"
    reason: str = ""
    times: list[float] = field(default_factory=list)
    seconds: float = 0.0
    docs_per_s: float = 0.0
    doc_tokens_per_s: float = 0.0
    prompt_tokens: int = 0
    prompt_tokens_per_s: float = 0.0
    latency_per_query_s: float = 0.0
    prompts: int = 0
    model_flops: float = 0.0
    tflops: float = 0.0
    peak_fraction: float = 0.0
    peak_rss_mb: float = 0.0
    model_rss_mb: float = 0.0
    activation_rss_mb: float = 0.0
    process_peak_rss_mb: float = 0.0
    speedup: dict[str, float] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    top10_agreement: dict[str, float] = field(default_factory=dict)
    scores: list[list[float]] = field(default_factory=list, repr=False)


def _estimate_reference_bytes(shape: DecoderShape, length: int, dtype_bytes: int) -> int:
    """Activation memory of the official path on one prompt: full-vocabulary logits and every hidden state."""
    return length * shape.vocab * dtype_bytes + (shape.layers + 1) * length * shape.hidden * dtype_bytes


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_workload(loader: Loader, specs: list[PathSpec], workload: Workload, shape: DecoderShape,
                 peaks: dict[str, Any], *, repeats: int, data: Path | None, time_cap: float,
                 base_rss: int = 0, release_reference: bool = False) -> dict[str, Any]:
    """Time every path on one workload, interleaving repeats, and compare scores and speed.

    Peak RSS per path is what a process running only that path would hold: ``base_rss`` (the
    process before any model), the RSS growth when the path's model was loaded, and the peak growth
    during its calls; the process's own peak (all models loaded) is reported beside it.
    """
    from ..hardware import release_memory

    tokenizer = None
    for spec in specs:
        if spec.kind == "lbnl":
            tokenizer = loader.scorer(spec).tokenizer
            break
    if tokenizer is None:
        from ..checkpoints import load_tokenizer

        tokenizer = load_tokenizer(loader.path)
    queries, documents, source = build_inputs(workload, tokenizer, data)
    max_doc = workload.tokens
    results: dict[str, PathResult] = {}
    runnable: list[PathSpec] = []
    for spec in specs:
        res = PathResult(spec.name, spec.describe())
        results[spec.name] = res
        lengths = [n for q, docs in zip(queries, documents)
                   for n in prompt_lengths(tokenizer, q, docs, spec.block_size, max_doc)]
        res.prompts, res.prompt_tokens = len(lengths), sum(lengths)
        res.model_flops = sum(shape.flops(n) for n in lengths)
        peak = peaks["bf16_tflops"] if spec.dtype == "bfloat16" else peaks["fp32_tflops"]
        estimate = res.model_flops / (peak * 1e12 * ASSUMED_EFFICIENCY)
        if estimate > time_cap:
            res.status, res.reason = "skipped", (
                f"estimated {estimate / 3600:.1f} h per call at {ASSUMED_EFFICIENCY:.0%} of the measured "
                f"{spec.dtype} matmul peak ({peak:.4f} TFLOP/s); cap {time_cap:.0f} s")
            continue
        if spec.kind == "reference":
            need = _estimate_reference_bytes(shape, max(lengths), 4 if spec.dtype == "float32" else 2)
            available = mem_available()
            if available is not None and need > 0.8 * available:
                res.status, res.reason = "skipped", (
                    f"the official path would hold {need / 2**30:.1f} GiB of logits and hidden states for a "
                    f"{max(lengths)}-token prompt; {available / 2**30:.1f} GiB available")
                continue
        runnable.append(spec)
    warm_q, warm_d = queries[:1], [documents[0][:2]]
    for spec in runnable:
        loader.scorer(spec).score(warm_q, warm_d, min(max_doc, 32))
    for r in range(repeats):
        for spec in runnable:
            res = results[spec.name]
            scorer = loader.scorer(spec)
            release_memory()  # every call starts from live memory only, whatever the path before it freed
            with RssPeak() as rss:
                start = time.perf_counter()
                scores = scorer.score(queries, documents, max_doc)
                elapsed = time.perf_counter() - start
            res.times.append(round(elapsed, 4))
            res.process_peak_rss_mb = max(res.process_peak_rss_mb, rss.peak / 2**20)
            res.activation_rss_mb = max(res.activation_rss_mb, (rss.peak - rss.before) / 2**20)
            res.model_rss_mb = loader.loaded_bytes.get(loader.key(spec), 0) / 2**20
            res.peak_rss_mb = base_rss / 2**20 + res.model_rss_mb + res.activation_rss_mb
            res.scores = scores
            _log(f"{workload.name} {spec.name} repeat {r + 1}/{repeats}: {elapsed:.2f} s")
    if release_reference:
        for spec in runnable:
            loader.release(spec)
    n_docs = workload.queries * workload.documents
    for res in results.values():
        if res.status != "ok":
            continue
        res.seconds = min(res.times)
        res.docs_per_s = n_docs / res.seconds
        res.doc_tokens_per_s = n_docs * workload.tokens / res.seconds
        res.prompt_tokens_per_s = res.prompt_tokens / res.seconds
        res.latency_per_query_s = res.seconds / workload.queries
        res.tflops = res.model_flops / res.seconds / 1e12
        res.peak_fraction = res.tflops / peaks["best_tflops"]
    for base in ("reference-fp32", "reference-bf16"):
        ref = results.get(base)
        if ref is None or ref.status != "ok":
            continue
        for res in results.values():
            if res.status == "ok" and res is not ref:
                res.speedup[base] = ref.seconds / res.seconds
                res.max_abs_diff[base] = max(abs(a - b) for x, y in zip(res.scores, ref.scores) for a, b in zip(x, y))
                res.top10_agreement[base] = _top_agreement(res.scores, ref.scores, 10)
    return {"workload": workload.name, "queries": workload.queries, "documents": workload.documents,
            "tokens": workload.tokens, "source": source, "results": [asdict(r) for r in results.values()]}


def _top_agreement(a: list[list[float]], b: list[list[float]], k: int) -> float:
    """Mean share of the top-k documents two scorings agree on."""
    shares = []
    for x, y in zip(a, b):
        n = min(k, len(x))
        top = lambda s: set(sorted(range(len(s)), key=lambda i: -s[i])[:n])  # noqa: E731
        shares.append(len(top(x) & top(y)) / n)
    return sum(shares) / len(shares)


def bench_checkpoint(shape: str, cache_dir: Path) -> Path:
    """A random checkpoint of a named shape (real Qwen3 tokenizer), built once under ``cache_dir``."""
    from ..testing.checkpoints import QWEN3_0_6B, build_random_checkpoint

    if shape not in SHAPES:
        raise InvalidInputError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    path = cache_dir / f"random-{shape}"
    if (path / "model.safetensors").exists():
        return path
    _log(f"building a random {shape} checkpoint in {path}")
    overrides = dict(QWEN3_0_6B) if shape == "qwen3-0.6b" else {}
    tmp = cache_dir / f".random-{shape}.partial"
    build_random_checkpoint(tmp, **overrides)
    tmp.rename(path)
    return path


def run_bench(model: Path, specs: list[PathSpec], workloads: list[Workload], *, repeats: int = 3,
              data: Path | None = None, time_cap: float = DEFAULT_TIME_CAP, threads: int | None = None,
              on_workload: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure the machine's matmul peaks, then every path on every workload; return the JSON-ready report.

    ``on_workload`` receives the report so far after each workload (long runs save partial results).
    """
    import torch
    from transformers import AutoConfig

    from ..hardware import tune_allocator

    if threads:
        torch.set_num_threads(threads)
    tuned = tune_allocator()
    torch.manual_seed(0)
    _log("measuring matmul peaks")
    peaks = measure_peaks()
    _log(f"peaks: fp32 {peaks['fp32_tflops']} TFLOP/s, bf16 {peaks['bf16_tflops']} TFLOP/s, "
         f"int8 linear {peaks['int8_linear_tflops']} TFLOP/s")
    config = AutoConfig.from_pretrained(model)
    shape = DecoderShape.from_config(config)
    loader = Loader(model)
    base_rss = rss()
    report: dict[str, Any] = {
        "command": None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {**peaks, "allocator_tuned": tuned},
        "model": str(model),
        "shape": asdict(shape), "repeats": repeats, "paths": {s.name: s.describe() for s in specs},
        "flops_formula": "layers * (2 * layer_params * T + 2 * heads * head_dim * T * (T + 1)) per prompt of T tokens",
        "workloads": [],
    }
    for workload in workloads:
        _log(f"workload {workload.name}")
        report["workloads"].append(run_workload(loader, specs, workload, shape, peaks, repeats=repeats, data=data,
                                                time_cap=time_cap, base_rss=base_rss))
        report["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        if on_workload is not None:
            on_workload(report)
    report["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report
