"""The official checkpoint layout on disk: find a directory, load its parts, write it back.

A checkpoint is a plain backbone config, the decoder weights under ``model.``, ``projector.0.weight``
and ``projector.2.weight`` in safetensors, and a tokenizer holding ``<|embed_token|>`` and
``<|rerank_token|>`` (docs/spec.md). No remote code is executed and weights load from safetensors
only. lbnl's own reading settings (see :mod:`lbnl.checkpoints.info`) go in an ``lbnl`` entry of
``config.json``, which other loaders ignore.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from ..hardware import resolve_device, resolve_dtype
from ..model import LBNLModel, build_projector, special_token_ids

HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """Return a local directory for a path or a Hugging Face hub id (downloaded once, then cached)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds config.json")
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"no checkpoint directory at {name!r}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=HUB_FILE_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one readable message
        raise CheckpointError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {exc})"
        ) from exc


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' loading chatter silenced for the duration (restored after)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The checkpoint's Hugging Face tokenizer, never with remote code."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, fix_mistral_regex=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad tokenizer
        raise CheckpointError(f"cannot load a tokenizer from {path}: {exc}") from exc


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint directory (sharded through the index, or every ``*.safetensors``)."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    return sorted(path.glob("*.safetensors"))


def load_backbone(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
                  attn_implementation: str | None = "sdpa") -> nn.Module:
    """The decoder of a checkpoint directory through ``transformers.AutoModel``: safetensors only, no remote
    code, quietly, every weight present (the lm_head of a causal LM is ignored)."""
    from transformers import AutoConfig, AutoModel

    path = Path(path)
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json")
    if not safetensors_files(path):
        raise CheckpointError(f"{path} has no .safetensors weights (pickled weights are never loaded)")
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    try:
        with quiet_transformers():
            backbone, info = AutoModel.from_pretrained(path, config=config, dtype=dtype, use_safetensors=True,
                                                       trust_remote_code=False, attn_implementation=attn_implementation,
                                                       output_loading_info=True)
    except OSError as exc:
        raise CheckpointError(f"cannot load a model from {path}: {exc}") from exc
    if info.get("missing_keys"):
        raise CheckpointError(f"{path} lacks backbone weights: {sorted(info['missing_keys'])[:5]}")
    return backbone


def checkpoint_dtype(path: str | os.PathLike[str]) -> Any:
    """The dtype a checkpoint's config records (``dtype`` or the older ``torch_dtype``), or ``None``."""
    try:
        raw = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return raw.get("dtype") or raw.get("torch_dtype")


def _load_projector_state(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.startswith("projector."):
                    state[key.removeprefix("projector.")] = f.get_tensor(key)
    return state


def projector_from_state(state: dict[str, torch.Tensor], hidden: int, where: str) -> nn.Sequential:
    """A projector holding ``state`` (``0.weight``, ``2.weight``), checked against the backbone's hidden size."""
    missing = [f"projector.{k}" for k in ("0.weight", "2.weight") if k not in state]
    if missing:
        raise CheckpointError(f"{where} has no projector weights: missing {', '.join(missing)}")
    w0, w2 = state["0.weight"], state["2.weight"]
    if w0.shape[1] != hidden or w2.shape[1] != w0.shape[0]:
        raise CheckpointError(f"projector shapes {tuple(w0.shape)} and {tuple(w2.shape)} do not fit hidden size {hidden}")
    projector = build_projector(hidden, w0.shape[0], w2.shape[0])
    projector.load_state_dict(state)
    return projector


def assemble(backbone: nn.Module, projector: nn.Sequential, tokenizer: Any, *, dtype: Any = None,
             recorded_dtype: Any = None, device: Any = None) -> LBNLModel:
    """An :class:`LBNLModel` on the chosen device and dtype, with the special tokens checked against the vocabulary."""
    embed_id, rerank_id = special_token_ids(tokenizer)
    rows = backbone.get_input_embeddings().num_embeddings
    if rows <= max(embed_id, rerank_id):
        raise CheckpointError(
            f"the tokenizer's special token ids ({embed_id}, {rerank_id}) exceed the model's vocabulary ({rows} rows)"
        )
    device_ = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, recorded_dtype, device_)
    backbone.config.dtype = torch_dtype
    model = LBNLModel(backbone, projector, embed_id, rerank_id).to(device=device_, dtype=torch_dtype)
    return model.eval()


def load_official(path: str | os.PathLike[str], tokenizer: Any, *, dtype: str | torch.dtype | None = None,
                  device: str | torch.device | None = None) -> LBNLModel:
    """Load a checkpoint directory in the official layout."""
    path = Path(path)
    special_token_ids(tokenizer)
    state = _load_projector_state(path) if safetensors_files(path) else {}
    recorded = checkpoint_dtype(path)
    device_ = resolve_device(device)
    backbone = load_backbone(path, dtype=resolve_dtype(dtype, recorded, device_))
    projector = projector_from_state(state, backbone.config.hidden_size, str(path))
    return assemble(backbone, projector, tokenizer, dtype=dtype, recorded_dtype=recorded, device=device_)


def save_official(model: LBNLModel, path: str | os.PathLike[str], tokenizer: Any | None = None,
                  settings: dict[str, Any] | None = None) -> None:
    """Write the official layout: config.json, model.safetensors (``model.*`` and ``projector.*``), tokenizer;
    ``settings`` (how the checkpoint must be read) go in config.json's ``lbnl`` entry."""
    if model.quantized:
        raise CheckpointError("a quantized model cannot be saved in the official layout; save the float model")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.backbone.config
    config.architectures = ["JinaForRanking"]
    config.save_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    raw["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    raw.pop("lbnl", None)
    if settings:
        raw["lbnl"] = settings
    (path / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    state = {f"model.{k}": v for k, v in model.backbone.state_dict().items()}
    state.update({f"projector.{k}": v for k, v in model.projector.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
