"""Compact LBNL adapters: LoRA factors, projector and special-token rows applied on a named base model.

An adapter directory holds ``lbnl_adapter.json`` (the base reference and shapes), ``lora.safetensors``
(``<module>.lora_A`` ``[r, in]`` and ``<module>.lora_B`` ``[out, r]`` per adapted linear layer of the
backbone), ``projector.safetensors``, ``token_rows.safetensors`` (the trained embedding rows and
their ids) and the tokenizer. Loading merges ``W += scaling * B @ A`` into the base weights, so the
result is an ordinary :class:`~lbnl.model.LBNLModel` and scoring costs nothing extra. Loading needs
neither peft nor any training code: this is how a small trained model ships inside the repository.

The base reference is a directory path (absolute, or relative to the adapter), a name that a
registered resolver knows (see :func:`register_base_resolver`), the name of an adapter shipped in
``lbnl/checkpoints/weights`` (adapters stack: a second training stage names the first), a base name that
``lbnl.checkpoints.bases.resolve_base`` knows, or a Hugging Face hub id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..defaults import SPECIAL_TOKENS
from ..errors import CheckpointError
from ..model import LBNLModel, special_token_ids
from .files import assemble, load_tokenizer, projector_from_state, resolve_checkpoint
from .files import load_backbone as load_plain_backbone
from .info import ADAPTER_FILE, ADAPTER_FORMAT, ADAPTER_VERSION, CheckpointInfo, is_adapter_dir, read_info

LORA_FILE = "lora.safetensors"
PROJECTOR_FILE = "projector.safetensors"
TOKEN_ROWS_FILE = "token_rows.safetensors"

BaseResolver = Callable[[str], "Path | None"]
_RESOLVERS: list[BaseResolver] = []


def register_base_resolver(resolver: BaseResolver) -> None:
    """Add a function mapping a base name to a local directory (or ``None`` when it does not know the name)."""
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)


def _builtin_resolver(name: str) -> Path | None:
    from . import bases
    from .builtin import shipped_adapter

    shipped = shipped_adapter(name)
    if shipped is not None:
        return shipped
    return Path(bases.resolve_base(name)) if name.strip().lower() in bases.BASES else None


def resolve_base(reference: str, adapter_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the base model directory an adapter refers to (path, registered name, then hub id)."""
    candidates = [Path(reference).expanduser()]
    if adapter_dir is not None and not Path(reference).is_absolute():
        candidates.insert(0, Path(adapter_dir) / reference)
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    for resolver in _RESOLVERS:
        try:
            found = resolver(reference)
        except LookupError:
            found = None
        if found is not None:
            return Path(found)
    found = _builtin_resolver(reference)  # a known name's own error (e.g. an offline download) is the real cause
    if found is not None:
        return found
    try:
        return resolve_checkpoint(reference)
    except CheckpointError as exc:
        raise CheckpointError(
            f"the adapter's base model {reference!r} was not found: not a directory, not a registered or "
            f"built-in base name, and not downloadable ({exc})"
        ) from None


def load_backbone(path: str | os.PathLike[str]) -> nn.Module:
    """The float32 decoder of a base: a checkpoint or plain causal LM directory, or an adapter (merged)."""
    if is_adapter_dir(path):
        return load_adapter_parts(read_info(path))[0]
    return load_plain_backbone(path)


def base_tokenizer(base_path: str | os.PathLike[str]) -> Any:
    """The tokenizer of a base model directory with the two LBNL special tokens added when missing."""
    if is_adapter_dir(base_path):
        return load_adapter_parts(read_info(base_path))[1]
    return _with_special_tokens(load_tokenizer(base_path))


def _with_special_tokens(tokenizer: Any) -> Any:
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_additional_special_tokens=False)
    return tokenizer


def _fingerprint(config: Any) -> dict[str, Any]:
    return {k: getattr(config, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size")}


def save_adapter(
    out_dir: str | os.PathLike[str],
    *,
    base: str,
    base_config: Any,
    base_vocab_size: int,
    lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    scaling: float,
    projector: nn.Module,
    token_ids: list[int],
    token_rows: torch.Tensor,
    tokenizer: Any,
    tokenizer_from_base: bool = False,
    lora_dtype: torch.dtype = torch.float32,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an adapter directory.

    Args:
        out_dir: directory to create (files inside are overwritten).
        base: the base reference stored for loading (path or built-in base name).
        base_config: the base backbone's config (a fingerprint is stored to catch a wrong base).
        base_vocab_size: embedding rows of the base; every row beyond it must be in ``token_ids``.
        lora: backbone module name -> (A ``[r, in]``, B ``[out, r]``).
        scaling: LoRA scaling (alpha / r) applied when merging.
        projector: the trained projector.
        token_ids: embedding rows stored (the special tokens and any rows added to the base).
        token_rows: ``[len(token_ids), hidden]`` their values.
        tokenizer: the tokenizer (with the special tokens), saved alongside unless ``tokenizer_from_base``.
        tokenizer_from_base: the tokenizer is the base's plus the two special tokens (see
            :func:`base_tokenizer`); only their ids are stored, which saves ~15 MB for Qwen tokenizers.
        lora_dtype: dtype of the stored LoRA factors (bfloat16 halves the size).
        extra: additional JSON-serialisable facts recorded in ``lbnl_adapter.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = base_vocab_size
    if token_ids:
        vocab_size = max(vocab_size, max(token_ids) + 1)
    missing = sorted(set(range(base_vocab_size, vocab_size)) - set(token_ids))
    if missing:
        raise ValueError(f"rows {missing[:5]} were added to the base but are not stored")
    tensors = {}
    for name, (a, b) in lora.items():
        tensors[f"{name}.lora_A"] = a.detach().to("cpu", lora_dtype).contiguous()
        tensors[f"{name}.lora_B"] = b.detach().to("cpu", lora_dtype).contiguous()
    save_file(tensors, str(out / LORA_FILE), metadata={"format": "pt"})
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in projector.state_dict().items()},
              str(out / PROJECTOR_FILE), metadata={"format": "pt"})
    save_file({"ids": torch.tensor(token_ids, dtype=torch.long),
               "rows": token_rows.detach().to("cpu", torch.float32).contiguous()},
              str(out / TOKEN_ROWS_FILE), metadata={"format": "pt"})
    vocab = tokenizer.get_vocab()
    if tokenizer_from_base:
        for stale in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                      "special_tokens_map.json", "chat_template.jinja"):
            (out / stale).unlink(missing_ok=True)
        tokenizer_meta: dict[str, Any] = {"from_base": True, "ids": {t: vocab[t] for t in SPECIAL_TOKENS}}
    else:
        tokenizer.save_pretrained(out)
        tokenizer_meta = {"from_base": False}
    meta = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "base_model": base,
        "base": _fingerprint(base_config),
        "base_vocab_size": base_vocab_size,
        "vocab_size": vocab_size,
        "lora_scaling": scaling,
        "lora_modules": len(lora),
        "tokenizer": tokenizer_meta,
        **(dict(extra) if extra else {}),
    }
    (out / ADAPTER_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def read_adapter_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``lbnl_adapter.json`` of an adapter directory."""
    info = read_info(path)
    if info.kind != "adapter":
        raise CheckpointError(f"{path} is not an lbnl adapter directory (no {ADAPTER_FILE})")
    return info.adapter


def merge_lora(backbone: nn.Module, lora: Mapping[str, torch.Tensor], scaling: float) -> int:
    """Add ``scaling * B @ A`` to each adapted linear weight of ``backbone``; returns the layers merged."""
    names = sorted({k.rsplit(".", 1)[0] for k in lora})
    for name in names:
        try:
            module = backbone.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"the base model has no layer {name!r}; is this adapter for another base?") from None
        if f"{name}.lora_A" not in lora or f"{name}.lora_B" not in lora:
            raise CheckpointError(f"the adapter's LoRA factors for {name} are incomplete")
        a, b = lora[f"{name}.lora_A"].float(), lora[f"{name}.lora_B"].float()
        weight = module.weight
        if a.ndim != 2 or b.ndim != 2 or tuple(weight.shape) != (b.shape[0], a.shape[1]) or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"LoRA shapes for {name} do not fit the base weight {tuple(weight.shape)}")
        with torch.no_grad():
            weight.add_((scaling * (b @ a)).to(weight.dtype))
    return len(names)


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds for a damaged file
        raise CheckpointError(f"cannot read {file}: {exc}") from exc


def load_adapter_parts(info: CheckpointInfo, _seen: tuple[Path, ...] = ()) -> tuple[nn.Module, Any, nn.Sequential]:
    """The merged float32 backbone (on the CPU), the tokenizer and the projector of an adapter; adapters
    stacked on adapters are loaded level by level, each ``lbnl_adapter.json`` read once."""
    path, meta = info.path, info.adapter
    here = path.resolve()
    if here in _seen:
        raise CheckpointError(f"adapter cycle: {' -> '.join(str(p) for p in (*_seen, here))}")
    for name in (LORA_FILE, PROJECTOR_FILE, TOKEN_ROWS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"adapter {path} lacks {name}")
    base_path = resolve_base(meta["base_model"], path)
    if is_adapter_dir(base_path):
        backbone, base_tok, _ = load_adapter_parts(read_info(base_path), (*_seen, here))
    else:
        backbone, base_tok = load_plain_backbone(base_path), None
    if meta.get("tokenizer", {}).get("from_base"):
        tokenizer = base_tok if base_tok is not None else _with_special_tokens(load_tokenizer(base_path))
        ids = dict(zip(SPECIAL_TOKENS, special_token_ids(tokenizer)))
        if ids != meta["tokenizer"].get("ids"):
            raise CheckpointError(f"the base tokenizer gives the special tokens the ids {ids}; the adapter was "
                                  f"trained with {meta['tokenizer'].get('ids')}")
    else:
        tokenizer = load_tokenizer(path)
    found = _fingerprint(backbone.config)
    expected = {k: v for k, v in meta.get("base", {}).items() if v is not None}
    wrong = {k: (v, found.get(k)) for k, v in expected.items() if found.get(k) != v}
    if wrong:
        raise CheckpointError(f"the base model {meta['base_model']!r} does not match the adapter "
                              f"(expected, found): {wrong}")
    rows_now = backbone.get_input_embeddings().num_embeddings
    if rows_now != meta.get("base_vocab_size"):
        raise CheckpointError(f"the base model has {rows_now} embedding rows; the adapter expects "
                              f"{meta.get('base_vocab_size')}")
    if meta.get("vocab_size", rows_now) > rows_now:
        backbone.resize_token_embeddings(meta["vocab_size"], mean_resizing=False)
    rows = _load_tensors(path / TOKEN_ROWS_FILE)
    embedding = backbone.get_input_embeddings().weight
    if set(rows) != {"ids", "rows"} or rows["rows"].ndim != 2 or rows["rows"].shape[1] != embedding.shape[1] \
            or rows["ids"].shape[0] != rows["rows"].shape[0]:
        raise CheckpointError("the adapter's token rows do not fit the base hidden size")
    if rows["ids"].numel() and (int(rows["ids"].min()) < 0 or int(rows["ids"].max()) >= embedding.shape[0]):
        raise CheckpointError("the adapter's token rows name ids outside the vocabulary")
    with torch.no_grad():
        embedding[rows["ids"]] = rows["rows"].to(embedding.dtype)
    merge_lora(backbone, _load_tensors(path / LORA_FILE), float(meta["lora_scaling"]))
    projector = projector_from_state(_load_tensors(path / PROJECTOR_FILE), backbone.config.hidden_size, str(path))
    return backbone, tokenizer, projector


def load_adapter(
    path: str | os.PathLike[str] | CheckpointInfo,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[LBNLModel, Any]:
    """Load the base, apply the adapter (merged), and return an :class:`LBNLModel` with the adapter's tokenizer."""
    info = path if isinstance(path, CheckpointInfo) else read_info(path)
    backbone, tokenizer, projector = load_adapter_parts(info)
    model = assemble(backbone, projector, tokenizer, dtype=dtype, recorded_dtype=info.adapter.get("dtype", "float32"),
                     device=device)
    return model, tokenizer
