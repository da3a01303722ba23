"""Running the bench: every path on every workload, timed interleaved, compared with the reference.

One run loads one checkpoint, builds the same inputs for every path and times the paths
interleaved (repeat 1 of every path, then repeat 2, ...), so a change in machine load hits all of
them alike; each path's time is its fastest repeat (other processes can only slow a call down).

Every path runs in one process, so they share its C allocator: the bench tunes it first, as lbnl
does when a reranker is created (:mod:`lbnl.hardware`), and the reference paths profit from that too;
``LBNL_MALLOC_TUNING=0`` measures everything with the allocator untouched.

Peers (:mod:`lbnl.bench.peers`) are paths like any other: opened (exported once, cached) before the
timing, skipped with the reason when they cannot run, then timed in the same interleaved loop. With a
peer in a rerank workload, and always in a ``T<N>`` forward workload, the final hidden states every path
read are compared with the float32 reference's (max abs difference, cosine per read position).
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
from .workloads import ForwardWorkload, Workload, build_inputs, forward_prompt

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
    #: Final hidden states at the read positions against the float32 reference: max abs difference, cosine.
    hidden_max_abs_diff: float | None = None
    hidden_cos_min: float | None = None
    hidden_cos_mean: float | None = None
    hidden_positions: int = 0
    top10_agreement: dict[str, float] = field(default_factory=dict)
    scores: list[list[float]] = field(default_factory=list, repr=False)


def _estimate_reference_bytes(shape: DecoderShape, length: int, dtype_bytes: int) -> int:
    """Activation memory of the official path on one prompt: full-vocabulary logits and every hidden state."""
    return length * shape.vocab * dtype_bytes + (shape.layers + 1) * length * shape.hidden * dtype_bytes


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


#: Paths every other path's speed is compared with, when they are in the run.
BASELINES = ("reference-fp32", "reference-bf16", "default", "default-bf16")


def _skip_reason(loader: Loader, spec: PathSpec, res: PathResult, longest: int, shape: DecoderShape,
                 peaks: dict[str, Any], time_cap: float) -> str | None:
    """Why ``spec`` cannot run this workload (too slow, too much memory, a peer that cannot open), or ``None``."""
    peak = peaks["bf16_tflops"] if spec.dtype == "bfloat16" else peaks["fp32_tflops"]
    estimate = res.model_flops / (peak * 1e12 * ASSUMED_EFFICIENCY)
    if estimate > time_cap:
        return (f"estimated {estimate / 3600:.1f} h per call at {ASSUMED_EFFICIENCY:.0%} of the measured "
                f"{spec.dtype} matmul peak ({peak:.4f} TFLOP/s); cap {time_cap:.0f} s")
    if spec.kind == "reference":
        need = _estimate_reference_bytes(shape, longest, 4 if spec.dtype == "float32" else 2)
        available = mem_available()
        if available is not None and need > 0.8 * available:
            return (f"the official path would hold {need / 2**30:.1f} GiB of logits and hidden states for a "
                    f"{longest}-token prompt; {available / 2**30:.1f} GiB available")
    if spec.kind == "peer":
        from .peers import PeerUnavailable

        try:
            scorer = loader.scorer(spec)
        except PeerUnavailable as exc:
            return str(exc)
        res.description = scorer.description or res.description
        need, available = scorer.activation_bytes(longest), mem_available()
        if available is not None and need > 0.8 * available:
            return (f"a {longest}-token forward would hold {need / 2**30:.1f} GiB of attention scores; "
                    f"{available / 2**30:.1f} GiB available")
    return None


def _finish(results: dict[str, PathResult], peaks: dict[str, Any], n_docs: int, doc_tokens: int,
            queries: int) -> None:
    """Speed figures of every measured path from its fastest repeat, and its speed against the baselines."""
    for res in results.values():
        if res.status != "ok":
            continue
        res.seconds = min(res.times)
        res.docs_per_s = n_docs / res.seconds
        res.doc_tokens_per_s = n_docs * doc_tokens / res.seconds
        res.prompt_tokens_per_s = res.prompt_tokens / res.seconds
        res.latency_per_query_s = res.seconds / queries
        res.tflops = res.model_flops / res.seconds / 1e12
        res.peak_fraction = res.tflops / peaks["best_tflops"]
    for base in BASELINES:
        ref = results.get(base)
        if ref is None or ref.status != "ok":
            continue
        for res in results.values():
            if res.status == "ok" and res is not ref:
                res.speedup[base] = ref.seconds / res.seconds


def _agreement(res: PathResult, pairs: list[tuple[Any, Any]]) -> None:
    """Max abs difference and cosine (per read position: min and mean) of hidden states against the reference."""
    import torch

    if not pairs:
        return
    got = torch.cat([h.float().reshape(-1, h.shape[-1]) for h, _ in pairs])
    ref = torch.cat([r.float().reshape(-1, r.shape[-1]) for _, r in pairs])
    cos = torch.nn.functional.cosine_similarity(got.double(), ref.double(), dim=-1)
    res.hidden_max_abs_diff = float((got - ref).abs().max())
    res.hidden_cos_min, res.hidden_cos_mean = float(cos.min()), float(cos.mean())
    res.hidden_positions = int(got.shape[0])


def _read_positions(ids: tuple[int, ...], embed_id: int) -> list[int]:
    return [i for i, t in enumerate(ids) if t == embed_id] + [len(ids) - 1]


def _plan(loader: Loader, specs: list[PathSpec], name: str, shape: DecoderShape, peaks: dict[str, Any],
          time_cap: float, lengths_of: Callable[[PathSpec], list[int]]) -> tuple[dict[str, PathResult], list[PathSpec]]:
    """A result per path with its prompts and model FLOPs (``lengths_of(spec)``: the prompt lengths the
    path reads), and the paths that will run; the others are marked skipped with the reason."""
    results: dict[str, PathResult] = {}
    runnable: list[PathSpec] = []
    for spec in specs:
        res = results[spec.name] = PathResult(spec.name, spec.describe())
        lengths = lengths_of(spec)
        res.prompts, res.prompt_tokens = len(lengths), sum(lengths)
        res.model_flops = sum(shape.flops(n) for n in lengths)
        reason = _skip_reason(loader, spec, res, max(lengths), shape, peaks, time_cap)
        if reason is not None:
            res.status, res.reason = "skipped", reason
            _log(f"{name} {spec.name} skipped: {reason}")
            continue
        runnable.append(spec)
    return results, runnable


def _timed(res: PathResult, loader: Loader, spec: PathSpec, base_rss: int, call: Callable[..., Any], *args: Any) -> Any:
    """Run one timed call ``call(*args)`` of a path from live memory only (whatever the path before it freed), record
    its time and memory in ``res`` and return what it returned."""
    from ..hardware import release_memory

    release_memory()
    with RssPeak() as rss:
        start = time.perf_counter()
        out = call(*args)
        elapsed = time.perf_counter() - start
    res.times.append(round(elapsed, 4))
    res.process_peak_rss_mb = max(res.process_peak_rss_mb, rss.peak / 2**20)
    res.activation_rss_mb = max(res.activation_rss_mb, (rss.peak - rss.before) / 2**20)
    res.model_rss_mb = loader.loaded_bytes.get(loader.key(spec), 0) / 2**20
    res.peak_rss_mb = base_rss / 2**20 + res.model_rss_mb + res.activation_rss_mb
    return out


def run_workload(loader: Loader, specs: list[PathSpec], workload: Workload | ForwardWorkload, shape: DecoderShape,
                 peaks: dict[str, Any], *, repeats: int, data: Path | None, time_cap: float,
                 base_rss: int = 0, release_reference: bool = False) -> dict[str, Any]:
    """Time every path on one workload, interleaving repeats, and compare scores and speed.

    Peak RSS per path is what a process running only that path would hold: ``base_rss`` (the
    process before any model), the RSS growth when the path's model was loaded, and the peak growth
    during its calls; the process's own peak (all models loaded) is reported beside it.
    """
    if isinstance(workload, ForwardWorkload):
        return run_forward_workload(loader, specs, workload, shape, peaks, repeats=repeats, data=data,
                                    time_cap=time_cap, base_rss=base_rss)
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
    results, runnable = _plan(loader, specs, workload.name, shape, peaks, time_cap, lambda spec: [
        n for q, docs in zip(queries, documents) for n in prompt_lengths(tokenizer, q, docs, spec.block_size, max_doc)])
    warm_q, warm_d = queries[:1], [documents[0][:2]]
    scorers = {}
    for spec in runnable:
        scorers[spec.name] = scorer = loader.scorer(spec)
        scorer.score(warm_q, warm_d, min(max_doc, 32))
        scorer.captured.clear()
    for r in range(repeats):
        for spec in runnable:
            res = results[spec.name]
            res.scores = _timed(res, loader, spec, base_rss, scorers[spec.name].score, queries, documents, max_doc)
            _log(f"{workload.name} {spec.name} repeat {r + 1}/{repeats}: {res.times[-1]:.2f} s")
    if release_reference:
        for spec in runnable:
            loader.release(spec)
    _finish(results, peaks, workload.queries * workload.documents, workload.tokens, workload.queries)
    for base in ("reference-fp32", "reference-bf16", "default-bf16"):  # score agreement against each present
        ref = results.get(base)
        if ref is None or ref.status != "ok":
            continue
        for res in results.values():
            if res.status == "ok" and res is not ref:
                res.max_abs_diff[base] = max(abs(a - b) for x, y in zip(res.scores, ref.scores) for a, b in zip(x, y))
                res.top10_agreement[base] = top_agreement(res.scores, ref.scores, 10)
    peers = [s for s in runnable if s.kind == "peer"]
    if peers:  # the hidden states the peers read, against the float32 reference, and every path's on the same prompts
        from ..model import special_token_ids

        embed_id, _ = special_token_ids(tokenizer)
        prompts = sorted({key for s in peers for key in scorers[s.name].captured}, key=len)
        _log(f"{workload.name}: float32 reference hidden states of {len(prompts)} prompt(s)")
        reference = dict(zip(prompts, loader.reference_hidden([(key, _read_positions(key, embed_id)) for key in prompts])))
        for spec in runnable:
            captured = scorers[spec.name].captured
            _agreement(results[spec.name], [(captured[k], reference[k]) for k in prompts if k in captured])
    return {"workload": workload.name, "kind": "rerank", "queries": workload.queries, "documents": workload.documents,
            "tokens": workload.tokens, "source": source, "results": [asdict(r) for r in results.values()]}


def run_forward_workload(loader: Loader, specs: list[PathSpec], workload: ForwardWorkload, shape: DecoderShape,
                         peaks: dict[str, Any], *, repeats: int, data: Path | None, time_cap: float,
                         base_rss: int = 0) -> dict[str, Any]:
    """Time one decoder forward over one prompt of exactly ``workload.tokens`` tokens on every path, interleaved,
    and compare each path's final hidden states at the read positions with the float32 reference's.

    lbnl's paths run their engine's forward (:func:`lbnl.engine.decode`, or the transformers forward for
    ``hf``), the reference paths the official causal-LM forward, the peers their runtime's forward.
    """
    from ..model import special_token_ids

    tokenizer = loader.tokenizer()
    embed_id, rerank_id = special_token_ids(tokenizer)
    ids, read, source = forward_prompt(tokenizer, workload.tokens, data, embed_id, rerank_id)
    results, runnable = _plan(loader, specs, workload.name, shape, peaks, time_cap, lambda spec: [len(ids)])
    scorers = {spec.name: loader.scorer(spec) for spec in runnable}
    warm = ids[:64]
    for scorer in scorers.values():
        scorer.hidden(warm, [len(warm) - 1])
    hidden: dict[str, Any] = {}
    for r in range(repeats):
        for spec in runnable:
            res = results[spec.name]
            hidden[spec.name] = _timed(res, loader, spec, base_rss, scorers[spec.name].hidden, ids, read)
            _log(f"{workload.name} {spec.name} repeat {r + 1}/{repeats}: {res.times[-1]:.2f} s")
    _finish(results, peaks, 1, len(ids), 1)
    if runnable:
        _log(f"{workload.name}: float32 reference hidden states")
        (reference,) = loader.reference_hidden([(ids, read)])
        for spec in runnable:
            _agreement(results[spec.name], [(hidden[spec.name], reference)])
    return {"workload": workload.name, "kind": "forward", "queries": 1, "documents": len(read) - 1,
            "tokens": len(ids), "source": source, "results": [asdict(r) for r in results.values()]}


def top_agreement(a: list[list[float]], b: list[list[float]], k: int) -> float:
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


def run_bench(model: Path, specs: list[PathSpec], workloads: list[Workload | ForwardWorkload], *,
              repeats: int = 3, data: Path | None = None, time_cap: float = DEFAULT_TIME_CAP,
              threads: int | None = None, peer_cache: Path | None = None,
              on_workload: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure the machine's matmul peaks, then every path on every workload, then the peaks again (the higher of
    each counts); return the JSON-ready report.

    ``peer_cache`` is where peers' exports are kept (default ``$LBNL_CACHE/bench/peers``); peers run with
    ``threads`` threads (default: torch's count). ``on_workload`` receives the report so far after each
    workload (long runs save partial results).
    """
    import torch
    from transformers import AutoConfig

    from ..hardware import tune_allocator

    if threads:
        torch.set_num_threads(threads)
    tuned = tune_allocator()
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model)
    shape = DecoderShape.from_config(config)
    _log("measuring matmul peaks")
    peaks = measure_peaks(head_dim=shape.head_dim)
    _log(f"peaks: fp32 {peaks['fp32_tflops']} TFLOP/s, bf16 {peaks['bf16_tflops']} TFLOP/s, "
         f"int8 linear {peaks['int8_linear_tflops']} TFLOP/s")
    loader = Loader(model, peer_cache=peer_cache, threads=threads or torch.get_num_threads(), log=_log)
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
        report["paths"].update({r["path"]: r["description"] for r in report["workloads"][-1]["results"]})
        if on_workload is not None:
            on_workload(report)
    _log("measuring matmul peaks again")
    _best_peaks(report, measure_peaks(head_dim=shape.head_dim))
    report["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report


def _best_peaks(report: dict[str, Any], again: dict[str, Any]) -> None:
    """Keep the higher of the peaks measured before and after the workloads (another process on the core can
    only lower a measurement) and express every path's FLOP/s as a fraction of the result."""
    machine = report["machine"]
    for key in ("fp32_tflops", "bf16_tflops", "int8_linear_tflops"):
        if again.get(key) is not None and (machine.get(key) is None or again[key] > machine[key]):
            machine[key] = again[key]
    machine["best_tflops"] = max(machine["fp32_tflops"], machine["bf16_tflops"])
    machine["best_dtype"] = "float32" if machine["fp32_tflops"] >= machine["bf16_tflops"] else "bfloat16"
    machine["peaks_measured"] = "best of before and after the workloads"
    for w in report["workloads"]:
        for r in w["results"]:
            if r["status"] == "ok":
                r["peak_fraction"] = r["tflops"] / machine["best_tflops"]
