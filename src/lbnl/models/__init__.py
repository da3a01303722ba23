"""Where models come from: checkpoint directories, the built-in default, and tiny random models for tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..model import LBNLModel


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The checkpoint's Hugging Face tokenizer, never with remote code."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, fix_mistral_regex=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad tokenizer
        raise CheckpointError(f"cannot load a tokenizer from {path}: {exc}") from exc


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[LBNLModel, Any]:
    """Load a local checkpoint directory (official layout, or an lbnl adapter applied to its base)."""
    path = Path(path)
    from .adapter import is_adapter_dir, load_adapter

    if is_adapter_dir(path):
        return load_adapter(path, dtype=dtype, device=device)
    tokenizer = load_tokenizer(path)
    model = LBNLModel.from_pretrained(path, tokenizer, dtype=dtype, device=device)
    return model, tokenizer


def _adapter_meta(path: Path) -> dict[str, Any]:
    from .adapter import ADAPTER_FILE, is_adapter_dir

    if not is_adapter_dir(path):
        return {}
    try:
        meta = json.loads((path / ADAPTER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def checkpoint_mode(path: str | os.PathLike[str]) -> str:
    """How a checkpoint was trained to be read: ``"pointwise"`` when an lbnl adapter says so,
    otherwise ``"listwise"`` (the spec; official checkpoints record no mode)."""
    return "pointwise" if _adapter_meta(Path(path)).get("mode") == "pointwise" else "listwise"


def checkpoint_fusion(path: str | os.PathLike[str]) -> float | None:
    """The candidate-BM25 fusion weight an lbnl adapter ships with (``fuse_bm25``), else ``None``."""
    weight = _adapter_meta(Path(path)).get("fuse_bm25")
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise CheckpointError(f"{path}: fuse_bm25 must be a number in [0, 1], got {weight!r}")
    return float(weight)
