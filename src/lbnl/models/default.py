"""The built-in default model.

lbnl does not ship trained weights yet; until it does, ``Reranker.from_pretrained()`` without a
path explains how to get a model instead of failing obscurely.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

OFFICIAL_HUB_ID = "jinaai/jina-reranker-v3"


def default_model_path() -> Path:
    """Local directory of the built-in default model."""
    raise CheckpointError(
        "lbnl has no built-in default model yet; pass a checkpoint directory or the hub id "
        f"{OFFICIAL_HUB_ID!r} (needs network access)"
    )
