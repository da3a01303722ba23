"""Random LBNL checkpoints in the official layout, built from a real tokenizer.

Tests, the demo and the benchmarks use them: real tokenization and real code paths, tiny or
full-size random weights, no download.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..model import LBNLModel, build_projector
from ..prompt import EMBED_TOKEN, RERANK_TOKEN

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


def find_qwen3_tokenizer() -> Path:
    """The real Qwen3 tokenizer: ``$LBNL_QWEN3_TOKENIZER``, else ``shared/tokenizers/qwen3`` beside the project."""
    env = os.environ.get("LBNL_QWEN3_TOKENIZER")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    for root in [Path.cwd(), *here.parents]:
        candidates.append(root / ".." / "shared" / "tokenizers" / "qwen3")
    for c in candidates:
        if (c / "tokenizer_config.json").exists():
            return c.resolve()
    raise FileNotFoundError("Qwen3 tokenizer not found; set LBNL_QWEN3_TOKENIZER to a directory holding it")


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
    model.save_pretrained(out_dir, tokenizer)
    return Path(out_dir)
