"""Peers in ``lbnl bench``: naming and selection, skipping with a reason, the export cache, the forward workload,
and the adapter that scores through a peer (with a stand-in runtime, so no peer package is needed here).
The real runtimes run in tests/e2e/test_bench_peers_run.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch

from lbnl.bench import DecoderShape, Loader, PathSpec, Workload, forward_prompt, parse_workload, run_workload
from lbnl.bench import peers
from lbnl.bench.peers import Backend, PeerUnavailable, expand_peers, parse_peer
from lbnl.bench.peers.export import cached, export_dir, fingerprint
from lbnl.bench.workloads import ForwardWorkload
from lbnl.errors import InvalidInputError

PEAKS = {"fp32_tflops": 0.1, "bf16_tflops": 0.4, "best_tflops": 0.4}


def shape_of(checkpoint: Path) -> DecoderShape:
    from transformers import AutoConfig

    return DecoderShape.from_config(AutoConfig.from_pretrained(checkpoint))


def test_families_expand_to_their_variants() -> None:
    assert expand_peers("openvino") == ["openvino:bf16", "openvino:f32"]
    assert expand_peers("onnxruntime:int8, llamacpp") == ["onnxruntime:int8", "llamacpp:bf16", "llamacpp:q8_0"]
    assert expand_peers("all") == [f"{f}:{v}" for f, vs in peers.PEERS.items() for v in vs]
    assert expand_peers("openvino,openvino:f32") == ["openvino:bf16", "openvino:f32"]
    for bad, message in [("tensorrt", "unknown peer"), ("openvino:int4", "unknown openvino variant")]:
        with pytest.raises(InvalidInputError, match=message):
            expand_peers(bad)


def test_peer_paths_parse() -> None:
    spec = PathSpec.parse("openvino:bf16")
    assert (spec.kind, spec.peer, spec.variant, spec.dtype, spec.block_size) == ("peer", "openvino", "bf16",
                                                                                "bfloat16", 125)
    assert PathSpec.parse("onnxruntime:int8").dtype == "float32"
    assert parse_peer("llamacpp:q8_0") == ("llamacpp", "q8_0")
    with pytest.raises(InvalidInputError, match="needs a variant"):
        PathSpec.parse("openvino")
    with pytest.raises(InvalidInputError, match="unknown llamacpp variant"):
        PathSpec.parse("llamacpp:q4_k")


def test_missing_packages_are_found_without_importing() -> None:
    assert peers.missing_packages("openvino", find_spec=lambda name: None) == ["openvino"]
    assert peers.missing_packages("onnxruntime", find_spec=lambda name: object()) == []


def test_a_missing_package_skips_the_peer_with_the_reason(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setitem(peers.PACKAGES, "openvino", ("lbnl_no_such_package",))
    specs = [PathSpec.parse("default"), PathSpec.parse("openvino:bf16")]
    loader = Loader(tiny_checkpoint, peer_cache=tmp_path)
    for workload in (Workload(1, 3, 16), ForwardWorkload(160)):
        out = run_workload(loader, specs, workload, shape_of(tiny_checkpoint), PEAKS, repeats=1, data=None,
                           time_cap=60.0)
        default, peer = out["results"]
        assert default["status"] == "ok" and default["seconds"] > 0
        assert peer["status"] == "skipped" and not peer["times"]
        assert "lbnl_no_such_package not installed" in peer["reason"] and "bench-peers" in peer["reason"]
    assert {p.name for d in tmp_path.iterdir() for p in d.iterdir()} <= {"reference-hidden"}  # nothing exported


def test_a_failing_export_skips_the_peer_once(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    import lbnl.bench.peers.onnxruntime as ort_peer

    calls = []

    def broken(*args: Any) -> Backend:
        calls.append(args)
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(peers, "unavailable", lambda family: None)
    monkeypatch.setattr(ort_peer, "open_backend", broken)
    loader = Loader(tiny_checkpoint, peer_cache=tmp_path)
    specs = [PathSpec.parse("onnxruntime:f32")]
    for workload in (Workload(1, 2, 16), ForwardWorkload(160)):
        (peer,) = run_workload(loader, specs, workload, shape_of(tiny_checkpoint), PEAKS, repeats=1, data=None,
                               time_cap=60.0)["results"]
        assert peer["status"] == "skipped"
        assert peer["reason"] == "onnxruntime:f32 failed to export or load: RuntimeError: exporter exploded"
    assert len(calls) == 1
    with pytest.raises(PeerUnavailable):
        loader.scorer(specs[0])


class TorchBackend(Backend):
    """A stand-in runtime: the float32 transformers forward, optionally rounded through bf16."""

    def __init__(self, checkpoint: Path, variant: str):
        from lbnl.bench.peers.export import load_backbone

        self.backbone, _, _ = load_backbone(checkpoint)
        self.name, self.variant = f"openvino:{variant}", variant

    def hidden(self, ids: Sequence[int], read: Sequence[int]) -> Any:
        with torch.inference_mode():
            out = self.backbone(input_ids=torch.tensor([list(ids)]), use_cache=False).last_hidden_state[0, list(read)]
        if self.variant == "bf16":
            out = out.bfloat16().float()
        return out.numpy().astype(np.float32)

    def describe(self) -> str:
        return f"OpenVINO stand-in, {self.variant}"


def test_a_peer_scores_and_is_compared_like_any_path(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    import lbnl.bench.peers.openvino as ov_peer

    monkeypatch.setattr(peers, "unavailable", lambda family: None)
    monkeypatch.setattr(ov_peer, "open_backend", lambda variant, checkpoint, cache, threads, log:
                        TorchBackend(checkpoint, variant))
    specs = [PathSpec.parse(p) for p in ("reference-fp32", "default", "openvino:f32", "openvino:bf16")]
    loader = Loader(tiny_checkpoint, peer_cache=tmp_path)
    shape = shape_of(tiny_checkpoint)
    out = run_workload(loader, specs, Workload(2, 5, 24), shape, PEAKS, repeats=2, data=None, time_cap=60.0)
    by_path = {r["path"]: r for r in out["results"]}
    assert all(r["status"] == "ok" and len(r["times"]) == 2 for r in by_path.values())
    f32, bf16, default = by_path["openvino:f32"], by_path["openvino:bf16"], by_path["default"]
    assert f32["description"] == "OpenVINO stand-in, f32"
    assert f32["prompts"] == default["prompts"] == 2 and f32["model_flops"] == default["model_flops"]
    assert f32["max_abs_diff"]["reference-fp32"] < 1e-5 and f32["top10_agreement"]["reference-fp32"] == 1.0
    assert f32["hidden_max_abs_diff"] < 1e-5 and f32["hidden_cos_min"] > 0.99999
    assert f32["hidden_positions"] == 2 * (5 + 1)
    assert 1e-5 < bf16["hidden_max_abs_diff"] < 0.1 and bf16["hidden_cos_min"] > 0.999
    assert default["hidden_max_abs_diff"] < 1e-4 and default["hidden_positions"] == 12  # lbnl's own, same prompts
    assert by_path["reference-fp32"]["hidden_max_abs_diff"] is None  # the official path records none
    assert "default" in f32["speedup"] and "reference-fp32" in f32["speedup"]

    forward = run_workload(loader, specs, ForwardWorkload(300), shape, PEAKS, repeats=1, data=None, time_cap=60.0)
    assert forward["kind"] == "forward" and forward["tokens"] == 300
    by_path = {r["path"]: r for r in forward["results"]}
    for name, r in by_path.items():
        assert r["status"] == "ok" and r["prompt_tokens"] == 300 and r["model_flops"] == shape.flops(300)
        assert r["prompt_tokens_per_s"] == pytest.approx(300 / r["seconds"])
        assert r["hidden_cos_min"] > (0.999 if name == "openvino:bf16" else 0.99999)
    assert by_path["reference-fp32"]["hidden_max_abs_diff"] < 1e-4


def test_forward_workloads_parse_and_have_exact_lengths(lbnl_tokenizer) -> None:
    assert parse_workload("T2048") == ForwardWorkload(2048) and parse_workload("t64").name == "T64"
    assert parse_workload("1x20x256") == Workload(1, 20, 256)
    for bad in ("T", "T0", "Tx", "T-5"):
        with pytest.raises(InvalidInputError, match="T<TOKENS>"):
            parse_workload(bad)
    embed, rerank = lbnl_tokenizer.convert_tokens_to_ids(["<|embed_token|>", "<|rerank_token|>"])
    for length in (200, 419, 700, 1000):  # 419: just past a whole document, reached by letting it run longer
        ids, read, source = forward_prompt(lbnl_tokenizer, length, None, embed, rerank)
        assert len(ids) == length and ids[-1] == rerank and read[-1] == length - 1
        assert [ids[i] for i in read[:-1]] == [embed] * (len(read) - 1) and source == "synthetic"
    ids, _, _ = forward_prompt(lbnl_tokenizer, 150, None, embed, rerank)  # below the shortest one-document prompt
    assert 140 < len(ids) <= 150
    with pytest.raises(InvalidInputError, match="too short"):
        forward_prompt(lbnl_tokenizer, 20, None, embed, rerank)


def test_exports_are_cached_by_fingerprint(tiny_checkpoint: Path, tmp_path: Path, qwen3_tokenizer_dir: Path) -> None:
    from lbnl.testing.checkpoints import build_random_checkpoint

    assert fingerprint(tiny_checkpoint) == fingerprint(tiny_checkpoint)
    assert fingerprint(tiny_checkpoint).startswith("qwen3-L2-h64-")
    same = build_random_checkpoint(tmp_path / "same", tokenizer_dir=qwen3_tokenizer_dir)
    other = build_random_checkpoint(tmp_path / "other", tokenizer_dir=qwen3_tokenizer_dir, seed=1)
    assert fingerprint(same) == fingerprint(tiny_checkpoint) != fingerprint(other)

    target = export_dir(tmp_path / "cache", tiny_checkpoint, "fake-f32")
    builds: list[Path] = []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        (tmp / "model.bin").write_text("weights")

    assert cached(target, "model.bin", build, lambda m: None) == target
    assert cached(target, "model.bin", build, lambda m: None) == target
    assert len(builds) == 1 and (target / "model.bin").read_text() == "weights"

    def crash(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("crash")

    broken = export_dir(tmp_path / "cache", tiny_checkpoint, "broken")
    with pytest.raises(RuntimeError):
        cached(broken, "model.bin", crash, lambda m: None)
    assert not broken.exists() and sorted(p.name for p in broken.parent.iterdir()) == ["fake-f32-v1"]


def test_unknown_peer_on_the_command_line_is_an_error(tiny_checkpoint: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lbnl", "bench", "--model", str(tiny_checkpoint), "--peers",
                           "tensorrt"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown peer 'tensorrt'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_peer_that_crashes_natively_is_skipped_not_fatal(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """llama.cpp runs a trial forward in a child process first; a child killed by a signal skips the peer."""
    import lbnl.bench.peers.llamacpp as llama_peer

    opened = []
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    monkeypatch.setattr(peers, "unavailable", lambda family: None)
    monkeypatch.setattr(llama_peer, "open_backend", lambda *args: opened.append(args))
    monkeypatch.setattr(peers.sys, "executable", str(crashing))
    with pytest.raises(PeerUnavailable, match=r"llamacpp:q8_0 crashed \(SIGSEGV\) in a 32-token trial forward"):
        peers.open_backend("llamacpp", "q8_0", tiny_checkpoint, tmp_path, 1)
    assert not opened  # never opened in this process
    calm = tmp_path / "calm"
    calm.write_text("#!/bin/sh\nexit 1\n")  # a Python error in the child: left for the in-process open to report
    calm.chmod(0o755)
    monkeypatch.setattr(peers.sys, "executable", str(calm))
    peers.open_backend("llamacpp", "q8_0", tiny_checkpoint, tmp_path, 1)
    assert len(opened) == 1
