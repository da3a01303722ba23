"""A damaged checkpoint is one clear CheckpointError naming it (the CLI prints one ``error:`` line), never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lbnl import CheckpointError, Reranker


@pytest.fixture()
def copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def weights(path: Path) -> Path:
    return path / "model.safetensors"


@pytest.mark.parametrize("damage", ["truncated", "bad header", "empty"])
def test_damaged_weights_file(copy: Path, damage: str) -> None:
    data = weights(copy).read_bytes()
    weights(copy).write_bytes({"truncated": data[: len(data) // 2], "bad header": b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=f"{copy}"):
        Reranker.from_pretrained(copy, device="cpu")


def test_wrong_shapes_and_bad_index(copy: Path) -> None:
    state = load_file(str(weights(copy)))
    save_file({**state, "projector.0.weight": torch.zeros(32)}, str(weights(copy)))
    with pytest.raises(CheckpointError):
        Reranker.from_pretrained(copy, device="cpu")
    layer = "model.layers.0.mlp.up_proj.weight"
    save_file({**state, layer: torch.zeros(3, 3)}, str(weights(copy)))
    with pytest.raises(CheckpointError, match="cannot load the checkpoint"):
        Reranker.from_pretrained(copy, device="cpu")
    save_file(state, str(weights(copy)))
    (copy / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        Reranker.from_pretrained(copy, device="cpu")


def test_unknown_model_type(copy: Path) -> None:
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture",
                                                  "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(CheckpointError):
        Reranker.from_pretrained(copy, device="cpu")
