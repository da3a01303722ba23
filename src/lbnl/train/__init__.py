"""Training LBNL rerankers (spec section 6): data, the four objectives, LoRA, the resumable loop.

Heavy pieces (torch, peft, bm25s) load only when used: ``from lbnl.train import train`` is cheap.

>>> from lbnl.train import load_config, train                               # doctest: +SKIP
>>> result = train(load_config("configs/scifact-tiny.yaml", ["optim.max_steps=10"]))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "train", "Trainer", "TrainResult", "init_lbnl_from_causal_lm"]


def __getattr__(name: str) -> Any:
    if name in ("train", "Trainer", "TrainResult"):
        from . import loop

        return getattr(loop, name)
    if name == "init_lbnl_from_causal_lm":
        from .modeling import init_lbnl_from_causal_lm

        return init_lbnl_from_causal_lm
    raise AttributeError(f"module 'lbnl.train' has no attribute {name!r}")
