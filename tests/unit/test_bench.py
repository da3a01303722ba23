"""``lbnl bench`` end to end on the tiny checkpoint, and the pieces it is built from. Nothing here asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lbnl.bench import DecoderShape, Loader, PathSpec, Workload, build_inputs, prompt_lengths, run_workload
from lbnl.errors import InvalidInputError
from lbnl.hardware import cpu_has_fast_bf16, fastest_weights
from lbnl.testing.checkpoints import QWEN3_0_6B


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lbnl", "bench", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_bench_command_writes_a_side_by_side_report(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run("--model", str(tiny_checkpoint), "--quick", "--workload", "1x5x24,2x3x16",
               "--paths", "reference-fp32,hf,default,fast,lbnl:block=2:int8,pointwise", "--output", str(out),
               "--markdown", str(tmp_path / "bench.md"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["command"].startswith("lbnl bench --model")
    assert report["machine"]["fp32_tflops"] > 0 and report["machine"]["best_tflops"] > 0
    assert [w["workload"] for w in report["workloads"]] == ["1x5x24", "2x3x16"]
    for w in report["workloads"]:
        by_path = {r["path"]: r for r in w["results"]}
        assert list(by_path) == ["reference-fp32", "hf", "default", "fast", "lbnl:block=2:int8", "pointwise"]
        for name, r in by_path.items():
            assert r["status"] == "ok" and len(r["times"]) == 1 and r["seconds"] > 0
            assert r["docs_per_s"] == pytest.approx(w["queries"] * w["documents"] / r["seconds"])
            assert r["doc_tokens_per_s"] == pytest.approx(r["docs_per_s"] * w["tokens"])
            assert 0 < r["peak_fraction"] and r["peak_rss_mb"] > 0 and r["model_flops"] > 0
            if name != "reference-fp32":
                assert r["speedup"]["reference-fp32"] > 0
        for exact in ("hf", "default"):
            assert by_path[exact]["max_abs_diff"]["reference-fp32"] < 1e-4
            assert by_path[exact]["top10_agreement"]["reference-fp32"] == 1.0
        assert by_path["pointwise"]["prompts"] == w["queries"] * w["documents"]
        assert by_path["default"]["prompts"] == w["queries"]
    assert "x ref fp32" in proc.stdout and "| path |" in (tmp_path / "bench.md").read_text()


def test_slow_bf16_is_skipped_with_a_reason(tiny_checkpoint: Path) -> None:
    peaks = {"fp32_tflops": 0.1, "bf16_tflops": 1e-9, "best_tflops": 0.1}
    specs = [PathSpec.parse("reference-bf16"), PathSpec.parse("default")]
    from transformers import AutoConfig

    shape = DecoderShape.from_config(AutoConfig.from_pretrained(tiny_checkpoint))
    out = run_workload(Loader(tiny_checkpoint), specs, Workload(1, 3, 16), shape, peaks, repeats=1, data=None,
                       time_cap=60.0)
    bf16, default = out["results"]
    assert bf16["status"] == "skipped" and "bfloat16 matmul peak" in bf16["reason"] and not bf16["times"]
    assert default["status"] == "ok" and not default["speedup"]


def test_flop_count_matches_the_issue_figure() -> None:
    """The issue: Qwen3-0.6B shape, a 6,554-token prompt, 21.9 s at ~0.49 TFLOP/s, i.e. ~10.7 TFLOP."""
    from transformers import AutoConfig

    shape = DecoderShape.from_config(AutoConfig.for_model("qwen3", vocab_size=151936, **QWEN3_0_6B))
    assert shape.layer_params == 15_728_640
    assert shape.flops(6554) / 1e12 == pytest.approx(0.49 * 21.9, rel=0.03)


def test_inputs_have_exact_token_lengths(lbnl_tokenizer, fixtures_dir: Path) -> None:
    data = fixtures_dir / "beir-mini"
    queries, docs, source = build_inputs(Workload(2, 5, 64), lbnl_tokenizer, data)
    assert source.startswith("corpus text") and len(queries) == 2 and all(len(d) == 5 for d in docs)
    counts = [len(ids) for ids in lbnl_tokenizer(docs[0], add_special_tokens=False)["input_ids"]]
    assert min(counts) >= 64
    one = prompt_lengths(lbnl_tokenizer, queries[0], docs[0], 125, 64)
    per_doc = prompt_lengths(lbnl_tokenizer, queries[0], docs[0], 1, 64)
    assert len(one) == 1 and len(per_doc) == 5 and sum(per_doc) > one[0]
    _, synthetic, label = build_inputs(Workload(1, 2, 8), lbnl_tokenizer, None)
    assert label == "synthetic" and len(synthetic[0]) == 2


@pytest.mark.parametrize("text", ["1x2", "ax2x3", "1x0x5"])
def test_bad_workloads_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInputError, match="workload"):
        Workload.parse(text)


def test_path_specs() -> None:
    spec = PathSpec.parse("lbnl:block=8:int8:hf")
    assert (spec.block_size, spec.quantize, spec.fast_forward, spec.kind) == (8, "int8", False, "lbnl")
    fastest = PathSpec.parse("fastest")
    assert (fastest.block_size, fastest.quantize, fastest.dtype) == (
        (16, fastest_weights("cpu", None)[0], "bfloat16") if cpu_has_fast_bf16() else (16, "int8-dynamic", "float32"))
    assert PathSpec.parse("lbnl:int8dyn").quantize == "int8-dynamic"
    assert PathSpec.parse("lbnl:bf16:int8:attn=int8").attention == "int8"
    assert PathSpec.parse("lbnl:int8:mm=onednn").int8_backend == "onednn"
    assert "via int_mm" in PathSpec.parse("lbnl:int8:mm=int_mm").describe()
    assert PathSpec.parse("default-bf16").dtype == "bfloat16" and PathSpec.parse("default").dtype == "float32"
    assert PathSpec.parse("reference-bf16").dtype == "bfloat16"
    with pytest.raises(InvalidInputError, match="unknown"):
        PathSpec.parse("lbnl:turbo")
    with pytest.raises(InvalidInputError, match="unknown path"):
        PathSpec.parse("onnx")


def test_bad_arguments_exit_with_a_message(tiny_checkpoint: Path) -> None:
    proc = run("--model", str(tiny_checkpoint), "--workload", "1x2")
    assert proc.returncode == 2 and "error: workload" in proc.stderr and "Traceback" not in proc.stderr


def test_rss_peak_sees_a_freed_allocation() -> None:
    from lbnl.bench.memory import RssPeak

    import mmap

    with RssPeak() as meter:
        # fresh pages from the kernel (a malloc'd buffer may reuse resident heap memory that earlier tests
        # freed, once lbnl.hardware.tune_allocator has run in this process)
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), 4096):  # touch every page
            block[offset] = 1
        block.close()
    assert meter.peak - meter.before >= 60 * 2**20
    with RssPeak() as again:  # the peak restarts at the current RSS
        pass
    assert again.peak - again.before < 32 * 2**20
