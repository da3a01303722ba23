"""Fixtures of the unit tests (the session-wide ones live in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from train_toy import write_beir


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir") / "toy")
