"""Shared fixtures: tiny random LBNL checkpoints built once per session from the real Qwen3 tokenizer
(vendored under tests/fixtures/qwen3), and a small BEIR-format data set of the suite's own."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
os.environ.setdefault("LBNL_QWEN3_TOKENIZER", str(FIXTURES / "qwen3"))
# No usage analytics leave a test run: Haystack reads this once, when it is first imported (a Pipeline.run
# in tests/e2e/test_clients.py would otherwise report to its analytics host).
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
# torch.compile'd kernels are built afresh in every run, as on a new machine: kernels found in a warm inductor cache
# skip inductor's first-compile set-up, which once passed here and failed in CI (docs/log.md, session 19).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = tempfile.TemporaryDirectory(prefix="lbnl-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE.name

from lbnl.testing.checkpoints import build_random_checkpoint, find_qwen3_tokenizer, load_lbnl_tokenizer  # noqa: E402

#: Test directories and the marker each gives its tests: ``make test-fast`` runs the unit tests only.
DIRECTORY_MARKERS = {"parity": "parity", "e2e": "slow"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for directory, marker in DIRECTORY_MARKERS.items():
            if directory in Path(str(item.fspath)).parent.parts[-1:]:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: the vendored Qwen3 tokenizer, official green-tea scores, a mini BEIR set."""
    return FIXTURES


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


@pytest.fixture(scope="session")
def reference(tiny_checkpoint: Path):
    """The independent official-path implementation (tests/reference.py) over the tiny checkpoint."""
    from reference import OfficialStyleReranker

    return OfficialStyleReranker(tiny_checkpoint)


@pytest.fixture(scope="module", params=["qwen3", "llama", "qwen2"])
def family_checkpoint(request, tmp_path_factory: pytest.TempPathFactory, qwen3_tokenizer_dir: Path) -> Path:
    """Tiny random checkpoints of the three decoder families the fast path runs."""
    from helpers import SMALL

    extra = {} if request.param == "qwen3" else SMALL
    return build_random_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt", tokenizer_dir=qwen3_tokenizer_dir,
                                   model_type=request.param, **extra)
