"""The model being trained: a base made into an LBNL model, LoRA through peft, trainable special-token rows.

The base may be an LBNL checkpoint, an lbnl adapter, or a plain causal LM (which gets the two
special tokens, initialised from existing embeddings, and a random projector). In LoRA mode the
decoder is frozen except for its LoRA factors; the projector and the embedding rows of the special
tokens are trained fully. The rows live in a small separate parameter that replaces the embedding
output at those tokens, so the rest of the embedding matrix cannot change and the optimiser keeps
no state for it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..errors import CheckpointError
from ..checkpoints import is_adapter_dir, load_checkpoint, load_tokenizer, save_official
from ..checkpoints.adapter import base_tokenizer, load_backbone, save_adapter
from ..defaults import EMBED_TOKEN, RERANK_TOKEN
from ..model import LBNLModel, build_projector

logger = logging.getLogger(__name__)

#: Words whose embeddings initialise the embed and rerank tokens with ``token_init: related``.
RELATED_WORDS = {EMBED_TOKEN: " passage", RERANK_TOKEN: " query"}


def _has_projector(path: Path) -> bool:
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            if any(k.startswith("projector.") for k in f.keys()):
                return True
    return False


def init_lbnl_from_causal_lm(
    base_dir: str | os.PathLike[str],
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    token_init: str = "mean",
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
) -> tuple[LBNLModel, Any]:
    """Turn a plain causal LM into an (untrained) LBNL model.

    The two special tokens are added to the tokenizer when missing (embeddings resized when the
    vocabulary grows); their rows start at the mean of all token embeddings (``token_init="mean"``)
    or at the embedding of a related word (``"related"``: " passage" and " query"); the projector
    is random (seeded).

    Args:
        base_dir: causal LM directory (safetensors; the decoder may sit under ``model.``).
        tokenizer_dir: tokenizer directory when ``base_dir`` has none.
        token_init: ``mean`` or ``related``.
        seed: seeds the projector.
        out_dir: when given, the result is also written there in the official layout.
    """
    original = load_tokenizer(tokenizer_dir or base_dir)
    original_len = len(original)
    missing = [t for t in (EMBED_TOKEN, RERANK_TOKEN) if t not in original.get_vocab()]
    tokenizer = base_tokenizer(tokenizer_dir or base_dir)
    backbone = load_backbone(base_dir)
    if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
        backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = backbone.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids([EMBED_TOKEN, RERANK_TOKEN])
    with torch.no_grad():
        mean = weight[: min(original_len, weight.shape[0])].mean(0)
        for token, token_id in zip((EMBED_TOKEN, RERANK_TOKEN), ids):
            if token not in missing:
                continue
            if token_init == "related":
                word_ids = tokenizer(RELATED_WORDS[token], add_special_tokens=False)["input_ids"]
                weight[token_id] = weight[word_ids].mean(0)
            elif token_init == "mean":
                weight[token_id] = mean
            else:
                raise ValueError(f"token_init must be mean or related, got {token_init!r}")
    generator = torch.Generator().manual_seed(seed)
    projector = build_projector(backbone.config.hidden_size)
    for layer in (projector[0], projector[2]):
        bound = 1.0 / layer.in_features ** 0.5
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound, generator=generator)
    model = LBNLModel(backbone, projector, ids[0], ids[1])
    if out_dir is not None:
        save_official(model, out_dir, tokenizer)
    return model, tokenizer


@dataclass
class Base:
    """A loaded starting point: the LBNL model, its tokenizer, and the embedding rows the base itself had."""

    model: LBNLModel
    tokenizer: Any
    base_vocab_size: int
    path: Path


def load_base(
    base: str | os.PathLike[str],
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    token_init: str = "mean",
    seed: int = 0,
) -> Base:
    """An LBNL model in float32 on the CPU from a checkpoint, an adapter, or a plain causal LM directory."""
    path = Path(base).expanduser()
    if not path.is_dir():
        from ..checkpoints.adapter import resolve_base

        path = resolve_base(str(base))
    if is_adapter_dir(path) or _has_projector(path):
        if tokenizer_dir is not None:
            logger.warning("model.tokenizer is ignored: %s carries its own tokenizer", path)
        model, tokenizer = load_checkpoint(path, dtype=torch.float32, device="cpu")
        return Base(model, tokenizer, model.backbone.get_input_embeddings().num_embeddings, path.resolve())
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} is neither an LBNL checkpoint, an adapter, nor a model directory")
    from transformers import AutoConfig

    rows = AutoConfig.from_pretrained(path, trust_remote_code=False).vocab_size
    model, tokenizer = init_lbnl_from_causal_lm(path, tokenizer_dir=tokenizer_dir, token_init=token_init, seed=seed)
    return Base(model, tokenizer, rows, path.resolve())


class TokenRows(nn.Module):
    """Trainable copies of a few embedding rows, swapped into the embedding output at their token ids."""

    def __init__(self, embedding: nn.Embedding, token_ids: list[int]):
        super().__init__()
        self.register_buffer("ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)
        self.rows = nn.Parameter(embedding.weight.detach()[self.ids].clone().float())
        self._handle = embedding.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        input_ids = inputs[0]
        for k in range(self.ids.shape[0]):
            hit = (input_ids == self.ids[k]).unsqueeze(-1)
            output = torch.where(hit, self.rows[k].to(output.dtype), output)
        return output

    def write_back(self, embedding: nn.Embedding) -> None:
        """Store the trained rows in the embedding matrix and stop swapping."""
        with torch.no_grad():
            embedding.weight[self.ids] = self.rows.to(embedding.weight.dtype)
        self._handle.remove()


def _layer_targets(backbone: nn.Module, targets: str | list[str], layers: range) -> list[str]:
    """Full names of the modules LoRA adapts in the given decoder layers (``targets``: names or 'all-linear')."""
    chosen = []
    for index in layers:
        for name, module in backbone.layers[index].named_modules():
            short = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.Linear) and (targets == "all-linear" or short in targets):
                chosen.append(f"layers.{index}.{name}")
    if not chosen:
        raise ValueError(f"no module of {targets!r} in the chosen layers")
    return chosen


class TrainableLBNL(nn.Module):
    """An :class:`LBNLModel` prepared for training (LoRA or full), with export to both output forms.

    Args:
        model: the LBNL model (float32).
        base_vocab_size: embedding rows of the base before special tokens were added; rows beyond it
            are trained like the special tokens' rows.
        finetune: ``lora`` or ``full``.
        lora_r, lora_alpha, lora_dropout, lora_target_modules: the LoRA configuration (peft).
        lora_layers: adapt only the last this many decoder layers (None: all).
        train_tokens: train the special-token rows; when false, and with ``lora_layers``, no gradient
            flows below the lowest adapted layer.
        gradient_checkpointing: recompute decoder activations in the backward pass.
    """

    def __init__(
        self,
        model: LBNLModel,
        *,
        base_vocab_size: int | None = None,
        finetune: str = "lora",
        lora_r: int = 16,
        lora_alpha: float = 32,
        lora_dropout: float = 0.0,
        lora_target_modules: str | list[str] = "all-linear",
        lora_layers: int | None = None,
        train_tokens: bool = True,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.finetune = finetune
        self.lora_scaling = lora_alpha / lora_r
        backbone = model.backbone
        self.base_config = backbone.config
        rows = backbone.get_input_embeddings().num_embeddings
        self.base_vocab_size = rows if base_vocab_size is None else min(base_vocab_size, rows)
        backbone.config.use_cache = False
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.token_rows: TokenRows | None = None
        if finetune == "lora":
            from peft import LoraConfig, get_peft_model

            for p in backbone.parameters():
                p.requires_grad_(False)
            layers = backbone.config.num_hidden_layers
            if lora_layers is not None:
                if not 0 < lora_layers <= layers:
                    raise ValueError(f"lora_layers must be between 1 and {layers}, got {lora_layers}")
                lora_target_modules = _layer_targets(backbone, lora_target_modules, range(layers - lora_layers, layers))
            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                target_modules=lora_target_modules, bias="none")
            model.backbone = get_peft_model(backbone, config)
            ids = sorted({model.embed_token_id, model.rerank_token_id, *range(self.base_vocab_size, rows)})
            self.token_rows = TokenRows(backbone.get_input_embeddings(), ids)
            self.token_rows.rows.requires_grad_(train_tokens)
        elif finetune != "full":
            raise ValueError(f"finetune must be lora or full, got {finetune!r}")
        for p in model.projector.parameters():
            p.requires_grad_(True)
        self.lbnl = model

    @property
    def embed_token_id(self) -> int:
        return self.lbnl.embed_token_id

    @property
    def rerank_token_id(self) -> int:
        return self.lbnl.rerank_token_id

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lbnl.hidden_states(input_ids)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lbnl.project(hidden)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by kind: ``backbone`` (LoRA factors or all decoder weights), ``projector``, ``tokens``."""
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "projector": [], "tokens": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            kind = "projector" if name.startswith("lbnl.projector.") else "tokens" if name.startswith("token_rows.") else "backbone"
            groups[kind].append(p)
        return groups

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor by name (what a resumable checkpoint stores)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        if set(params) != set(state):
            raise CheckpointError("the checkpoint's trainable tensors do not match this model; was the config changed?")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name])

    def lora_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Backbone module name -> (A, B) for every LoRA layer."""
        if self.finetune != "lora":
            return {}
        from peft.tuners.lora import LoraLayer

        prefix = "base_model.model."
        factors = {}
        for name, module in self.lbnl.backbone.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                factors[name.removeprefix(prefix)] = (module.lora_A["default"].weight, module.lora_B["default"].weight)
        return factors

    def round_lora(self, dtype: torch.dtype) -> None:
        """Round the LoRA factors to ``dtype`` (in place), so a merged model equals the adapter stored in it."""
        with torch.no_grad():
            for a, b in self.lora_factors().values():
                a.copy_(a.to(dtype).to(a.dtype))
                b.copy_(b.to(dtype).to(b.dtype))

    def save_adapter(self, out_dir: str | os.PathLike[str], *, base: str, tokenizer: Any,
                     base_path: str | os.PathLike[str] | None = None, lora_dtype: torch.dtype = torch.float32,
                     extra: dict[str, Any] | None = None) -> Path:
        """Write the compact adapter (LoRA runs only); see :mod:`lbnl.checkpoints.adapter`.

        Args:
            out_dir: adapter directory.
            base: base reference stored in the adapter (path or built-in base name).
            tokenizer: the trained model's tokenizer.
            base_path: the base directory; when its tokenizer plus the special tokens equals
                ``tokenizer``, the adapter stores no tokenizer files.
            lora_dtype: dtype of the stored LoRA factors.
            extra: facts recorded in ``lbnl_adapter.json``.
        """
        if self.finetune != "lora" or self.token_rows is None:
            raise ValueError("only LoRA runs have an adapter form")
        from_base = False
        if base_path is not None:
            try:
                from_base = base_tokenizer(base_path).get_vocab() == tokenizer.get_vocab()
            except CheckpointError:
                from_base = False
        return save_adapter(
            out_dir, base=base, base_config=self.base_config, base_vocab_size=self.base_vocab_size,
            lora=self.lora_factors(), scaling=self.lora_scaling, projector=self.lbnl.projector,
            token_ids=self.token_rows.ids.tolist(), token_rows=self.token_rows.rows, tokenizer=tokenizer,
            tokenizer_from_base=from_base, lora_dtype=lora_dtype,
            extra={"dtype": "float32", **(extra or {})},
        )

    def inference_copy(self, dtype: torch.dtype | None = None) -> LBNLModel:
        """A separate plain :class:`LBNLModel` with the current weights (LoRA merged, token rows written in),
        in ``dtype`` when given: validation runs it through lbnl's fast inference path, and the model being
        trained is left untouched."""
        import copy

        model = copy.deepcopy(self.lbnl)
        if hasattr(model.backbone, "merge_and_unload"):
            model.backbone = model.backbone.merge_and_unload()
        embedding = model.backbone.get_input_embeddings()
        embedding._forward_hooks.clear()
        if self.token_rows is not None:
            with torch.no_grad():
                embedding.weight[self.token_rows.ids] = self.token_rows.rows.detach().to(embedding.weight.dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    def merged(self) -> LBNLModel:
        """The trained model as a plain :class:`LBNLModel` (LoRA merged, token rows written back).

        This changes the modules in place; call it once, at the end of training.
        """
        model = self.lbnl
        if self.finetune == "lora":
            base = model.backbone.merge_and_unload()
            if self.token_rows is not None:
                self.token_rows.write_back(base.get_input_embeddings())
                self.token_rows = None
            model.backbone = base
        if getattr(model.backbone, "is_gradient_checkpointing", False):
            model.backbone.gradient_checkpointing_disable()
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()
