"""The layering of docs/architecture.md, enforced: import-linter's contracts in pyproject.toml hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("import-linter is missing: pip install -e '.[dev]'")
    done = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "kept" in done.stdout


def test_importing_lbnl_is_light() -> None:
    """``import lbnl`` and the CLI's help load neither torch nor transformers."""
    code = ("import sys, lbnl, lbnl.cli; lbnl.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_public_api_is_listed() -> None:
    import lbnl

    assert {"Reranker", "BaseReranker", "RerankResult", "FusedReranker", "LBNLError", "__version__"} <= set(dir(lbnl))
    for name in dir(lbnl):
        assert getattr(lbnl, name) is not None
