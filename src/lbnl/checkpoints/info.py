"""What a checkpoint says about itself, read once: its kind, name and how its scores must be read.

Two kinds exist. An *official* checkpoint is the jina-reranker-v3 layout (:mod:`.files`); lbnl's
reading settings, when it has any, are an ``lbnl`` entry of its ``config.json``. An *adapter* is
lbnl's compact form (:mod:`.adapter`); its ``lbnl_adapter.json`` holds the same settings at the top
level. The settings:

- ``mode``: ``listwise`` (the spec) or ``pointwise`` (a model trained to score each document in a
  prompt of its own must be read that way);
- ``block_size``: documents per prompt when it is not the spec's 125 (a model trained on short lists,
  or saved from a ``fast`` reranker);
- ``fusion``: ``{"weight": w, "transform": t}`` when the model's scores are to be blended with BM25
  over the request's documents (see :mod:`lbnl.fusion`); older adapters write ``fuse_bm25: w``,
  which means the ``minmax`` transform.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

ADAPTER_FILE = "lbnl_adapter.json"
ADAPTER_FORMAT = "lbnl-adapter"
ADAPTER_VERSION = 1
MODES = ("listwise", "pointwise")
#: How fused scores are made: see :mod:`lbnl.fusion`.
FUSION_TRANSFORMS = ("minmax", "coverage")


@dataclass(frozen=True)
class Fusion:
    """Blend of the model's scores with BM25 over the request's documents: ``weight`` is the model's share."""

    weight: float
    transform: str = "minmax"

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0 <= self.weight <= 1:
            raise CheckpointError(f"a fusion weight must be a number in [0, 1], got {self.weight!r}")
        if self.transform not in FUSION_TRANSFORMS:
            raise CheckpointError(f"unknown fusion transform {self.transform!r}; known: {', '.join(FUSION_TRANSFORMS)}")

    def as_dict(self) -> dict[str, Any]:
        return {"weight": float(self.weight), "transform": self.transform}


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint directory and the settings it records (see the module docstring)."""

    path: Path
    kind: str
    mode: str = "listwise"
    fusion: Fusion | None = None
    adapter: dict[str, Any] = field(default_factory=dict, repr=False)
    block_size: int | None = None

    @property
    def name(self) -> str:
        """The checkpoint's own name: its directory's name (never a full path)."""
        return self.path.resolve().name or "lbnl"

    def settings(self) -> dict[str, Any]:
        """The reading settings, in the form :func:`read_info` reads back (empty for the spec's defaults)."""
        out: dict[str, Any] = {}
        if self.mode != "listwise":
            out["mode"] = self.mode
        if self.block_size is not None:
            out["block_size"] = self.block_size
        if self.fusion is not None:
            out["fusion"] = self.fusion.as_dict()
        return out


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an lbnl adapter directory."""
    return (Path(path) / ADAPTER_FILE).is_file()


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} does not hold a JSON object")
    return data


def parse_settings(raw: dict[str, Any], where: str) -> tuple[str, Fusion | None, int | None]:
    """``(mode, fusion, block_size)`` from a settings mapping (an adapter's top level or config.json's ``lbnl``)."""
    mode = raw.get("mode") or "listwise"
    if mode not in MODES:
        raise CheckpointError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    block_size = raw.get("block_size")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise CheckpointError(f"{where}: block_size must be a positive integer, got {block_size!r}")
    fusion_raw = raw.get("fusion")
    if fusion_raw is None and raw.get("fuse_bm25") is not None:
        fusion_raw = {"weight": raw["fuse_bm25"], "transform": "minmax"}
    if fusion_raw is None:
        return mode, None, block_size
    if not isinstance(fusion_raw, dict):
        raise CheckpointError(f"{where}: fusion must be an object with a weight, got {fusion_raw!r}")
    try:
        return mode, Fusion(fusion_raw.get("weight"), fusion_raw.get("transform", "minmax")), block_size
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def read_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read a local checkpoint directory's description (one parse of its JSON)."""
    path = Path(path)
    if is_adapter_dir(path):
        meta = _read_json(path / ADAPTER_FILE)
        if meta.get("format") != ADAPTER_FORMAT or meta.get("version") != ADAPTER_VERSION:
            raise CheckpointError(f"{path}: not an lbnl adapter of version {ADAPTER_VERSION}")
        if not isinstance(meta.get("base_model"), str) or not meta["base_model"]:
            raise CheckpointError(f"{path / ADAPTER_FILE} names no base_model")
        mode, fusion, block_size = parse_settings(meta, str(path / ADAPTER_FILE))
        return CheckpointInfo(path, "adapter", mode, fusion, meta, block_size)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json (nor {ADAPTER_FILE}): not a checkpoint directory")
    settings = _read_json(path / "config.json").get("lbnl") or {}
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path / 'config.json'}: the lbnl entry must be an object")
    mode, fusion, block_size = parse_settings(settings, f"{path / 'config.json'} (lbnl)")
    return CheckpointInfo(path, "official", mode, fusion, block_size=block_size)
