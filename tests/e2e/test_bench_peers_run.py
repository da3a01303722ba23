"""Every installed peer runtime on tiny random checkpoints: exported, cached, and within tolerance of the float32
reference's final hidden states; then ``lbnl bench --peers all`` end to end. A peer whose package is missing is
skipped with the reason (llama-cpp-python is not part of ``make test``'s install: it compiles llama.cpp), and so is
one whose runtime crashes natively on this machine (the bench's trial forward in a child process says so: seen
with llama.cpp's q8_0 path on an AMX CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lbnl.bench import forward_prompt
from lbnl.bench.peers import PEERS, Backend, PeerUnavailable, open_backend, unavailable
from lbnl.bench.peers.export import load_backbone

VARIANTS = [(family, variant) for family, variants in PEERS.items() for variant in variants]
#: Max abs difference for float32 runtimes; cosine for the rounded ones (bf16, int8, q8_0; f16 KV in llama.cpp).
F32_TOLERANCE, COSINE_FLOOR, ROUNDED_TOLERANCE = 1e-4, 0.999, 0.25


def shared_cache(factory: pytest.TempPathFactory) -> Path:
    """One bench cache for the whole module: each export is made once (the int8 ONNX one reuses the f32 one,
    and the command-line run finds every export made by the tests before it)."""
    return factory.getbasetemp() / "bench-cache"


def reference(checkpoint: Path, ids: list[int], read: list[int]) -> np.ndarray:
    backbone, _, _ = load_backbone(checkpoint)
    with torch.inference_mode():
        return backbone(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0, read].numpy()


def crashed(reason: str) -> bool:
    """Whether a peer was skipped because its runtime faulted in the trial forward (not lbnl's doing)."""
    return " crashed (" in reason and "trial forward in a child process" in reason


def open_or_skip(family: str, variant: str, checkpoint: Path, cache: Path) -> Backend:
    try:
        return open_backend(family, variant, checkpoint, cache, 1)
    except PeerUnavailable as exc:
        if crashed(str(exc)):
            pytest.skip(str(exc))
        raise


def check(hidden: np.ndarray, expected: np.ndarray, variant: str) -> None:
    assert hidden.shape == expected.shape and hidden.dtype == np.float32
    diff = float(np.abs(hidden - expected).max())
    cos = (hidden * expected).sum(-1) / np.linalg.norm(hidden, axis=-1) / np.linalg.norm(expected, axis=-1)
    if variant == "f32":
        assert diff < F32_TOLERANCE, diff
    else:
        assert diff < ROUNDED_TOLERANCE and cos.min() > COSINE_FLOOR, (diff, cos.min())


@pytest.mark.parametrize("family,variant", VARIANTS, ids=[f"{f}:{v}" for f, v in VARIANTS])
def test_peer_matches_the_float32_reference(family: str, variant: str, tiny_checkpoint: Path, lbnl_tokenizer,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    reason = unavailable(family)
    if reason is not None:
        pytest.skip(reason)
    cache = shared_cache(tmp_path_factory) / "bench" / "peers"
    embed, rerank = lbnl_tokenizer.convert_tokens_to_ids(["<|embed_token|>", "<|rerank_token|>"])
    ids, read, _ = forward_prompt(lbnl_tokenizer, 300, None, embed, rerank)
    backend = open_or_skip(family, variant, tiny_checkpoint, cache)
    assert backend.name == f"{family}:{variant}"
    assert {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime", "llamacpp": "llama.cpp"}[family] in backend.describe()
    expected = reference(tiny_checkpoint, ids, read)
    check(backend.hidden(ids, read), expected, variant)
    check(backend.hidden(ids, read), expected, variant)  # a second call on the same runtime state
    short = ids[:120]
    check(backend.hidden(short, [119]), reference(tiny_checkpoint, short, [119]), variant)
    exported = sorted(p.name for p in next(cache.iterdir()).iterdir())
    again = open_backend(family, variant, tiny_checkpoint, cache, 1, log=lambda m: pytest.fail(f"exported again: {m}"))
    check(again.hidden(ids, read), expected, variant)
    assert sorted(p.name for p in next(cache.iterdir()).iterdir()) == exported


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_other_families_export(model_type: str, tmp_path: Path, qwen3_tokenizer_dir: Path, lbnl_tokenizer) -> None:
    """Llama (rotary permutation in the GGUF) and Qwen2 (q/k/v biases) through one float32 and one quantized peer."""
    from helpers import SMALL

    from lbnl.testing.checkpoints import build_random_checkpoint

    runnable = [(f, v) for f, v in (("onnxruntime", "f32"), ("llamacpp", "q8_0")) if unavailable(f) is None]
    if not runnable:
        pytest.skip("neither onnxruntime nor llama-cpp-python is installed")
    checkpoint = build_random_checkpoint(tmp_path / "ckpt", tokenizer_dir=qwen3_tokenizer_dir, model_type=model_type,
                                         **SMALL)
    embed, rerank = lbnl_tokenizer.convert_tokens_to_ids(["<|embed_token|>", "<|rerank_token|>"])
    ids, read, _ = forward_prompt(lbnl_tokenizer, 250, None, embed, rerank)
    expected = reference(checkpoint, ids, read)
    ran = []
    for family, variant in runnable:
        try:
            backend = open_backend(family, variant, checkpoint, tmp_path / "cache", 1)
        except PeerUnavailable as exc:
            if crashed(str(exc)):
                continue
            raise
        check(backend.hidden(ids, read), expected, variant)
        ran.append(family)
    if not ran:
        pytest.skip("every installed runtime crashed in its trial forward here")


def test_unknown_model_type_is_unavailable_not_a_crash(tiny_checkpoint: Path, tmp_path: Path) -> None:
    if unavailable("llamacpp") is not None:
        pytest.skip(unavailable("llamacpp"))
    fake = tmp_path / "fake"
    fake.mkdir()
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    (fake / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    (fake / "model.safetensors").symlink_to(tiny_checkpoint / "model.safetensors")
    with pytest.raises(PeerUnavailable, match="no writer for model type 'gpt_neox'"):
        open_backend("llamacpp", "q8_0", fake, tmp_path / "cache", 1)


def test_bench_command_with_a_peer_of_each_family(tiny_checkpoint: Path, tmp_path: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    out, cache = tmp_path / "bench.json", shared_cache(tmp_path_factory)
    peers = [("onnxruntime", "int8"), ("openvino", "bf16"), ("llamacpp", "q8_0")]
    proc = subprocess.run([sys.executable, "-m", "lbnl", "bench", "--model", str(tiny_checkpoint), "--threads", "1",
                           "--workload", "T200,1x4x24", "--paths", "default", "--repeats", "1",
                           "--peers", ",".join(f"{f}:{v}" for f, v in peers),
                           "--cache-dir", str(cache), "--output", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads(out.read_text())
    assert [w["workload"] for w in report["workloads"]] == ["T200", "1x4x24"]
    for w in report["workloads"]:
        by_path = {r["path"]: r for r in w["results"]}
        assert list(by_path) == ["default"] + [f"{f}:{v}" for f, v in peers]
        for (family, variant) in peers:
            r = by_path[f"{family}:{variant}"]
            if unavailable(family) is not None or crashed(r.get("reason") or ""):
                assert r["status"] == "skipped" and ("not installed" in r["reason"] or crashed(r["reason"]))
                assert f"{family}:{variant}  skipped: " in proc.stdout
                continue
            assert r["status"] == "ok" and r["seconds"] > 0 and r["peak_fraction"] > 0, r
            assert r["hidden_cos_min"] > COSINE_FLOOR and r["speedup"]["default"] > 0
            if variant == "f32":
                assert r["hidden_max_abs_diff"] < F32_TOLERANCE
        if any(unavailable(f) is None for f in PEERS):
            assert by_path["default"]["hidden_max_abs_diff"] < 1e-4
    assert "max |dh| fp32" in proc.stdout and "Peers:" in proc.stdout
    assert list((cache / "bench" / "peers").iterdir())  # the exports are cached under the bench cache
