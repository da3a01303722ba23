"""Where models come from: checkpoint directories (official layout or lbnl adapters), hub ids, named
bases and the built-in models, and how each must be read (:class:`CheckpointInfo`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..defaults import DEFAULT_MODEL_NAME
from ..errors import CheckpointError, InvalidInputError
from ..model import LBNLModel
from .adapter import load_adapter
from .builtin import default_model_path, shipped_adapter
from .files import load_official, load_tokenizer, resolve_checkpoint, save_official
from .info import CheckpointInfo, Fusion, is_adapter_dir, read_info

__all__ = ["CheckpointInfo", "Fusion", "is_adapter_dir", "load_checkpoint", "load_tokenizer", "locate",
           "read_info", "resolve_checkpoint", "save_official"]


def locate(name_or_path: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """``(local directory, display name)`` of a model reference: ``None`` is the built-in default, a shipped
    adapter's name is that adapter, otherwise a directory or a hub id. The name is never a full path."""
    if name_or_path is None:
        return default_model_path(), DEFAULT_MODEL_NAME
    reference = str(name_or_path)
    shipped = shipped_adapter(reference) if not Path(reference).expanduser().exists() else None
    if shipped is not None:
        return shipped, reference
    path = resolve_checkpoint(name_or_path)
    if not Path(reference).expanduser().exists() and reference.count("/") == 1:
        return path, reference  # a hub id
    return path, Path(reference).expanduser().resolve().name or "lbnl"


def load_checkpoint(
    path: str | os.PathLike[str] | CheckpointInfo,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[LBNLModel, Any]:
    """Load a local checkpoint directory (official layout, or an lbnl adapter applied to its base)."""
    info = path if isinstance(path, CheckpointInfo) else read_info(path)
    try:
        if info.kind == "adapter":
            return load_adapter(info, dtype=dtype, device=device)
        tokenizer = load_tokenizer(info.path)
        return load_official(info.path, tokenizer, dtype=dtype, device=device), tokenizer
    except (CheckpointError, InvalidInputError):
        raise
    except (OSError, ValueError, RuntimeError, KeyError, IndexError, TypeError, RecursionError, SafetensorError) as exc:
        # A damaged or inconsistent checkpoint (truncated weights, a bad index, tensors of the wrong
        # shape, an unknown model type): one message naming the directory, never a traceback.
        raise CheckpointError(f"cannot load the checkpoint at {info.path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}") from exc
