"""Shared fixtures: tiny random LBNL checkpoints built once per session from the real Qwen3 tokenizer."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lbnl.models.random_init import build_random_checkpoint, find_qwen3_tokenizer, load_lbnl_tokenizer

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED.resolve()


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    return find_qwen3_tokenizer()


@pytest.fixture(scope="session")
def lbnl_tokenizer(qwen3_tokenizer_dir: Path):
    """The real Qwen3 tokenizer plus the three tokens of the official checkpoint."""
    return load_lbnl_tokenizer(qwen3_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Path:
    """A 2-layer, hidden-64 random Qwen3 LBNL checkpoint in the official layout (float32)."""
    return build_random_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", tokenizer_dir=qwen3_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_reranker(tiny_checkpoint: Path):
    from lbnl import Reranker

    return Reranker.from_pretrained(tiny_checkpoint, device="cpu")
