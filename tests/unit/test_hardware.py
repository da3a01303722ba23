"""Process-level tuning (lbnl.hardware): the allocator setting is applied once, can be turned off, and
leaves results unchanged. Each case runs in a fresh interpreter because the setting is per process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
import torch
from lbnl.hardware import allocator_tuned, release_memory, tune_allocator
first = tune_allocator()
second = tune_allocator()
x = torch.arange(12_000_000, dtype=torch.float32)   # 48 MB: above glibc's largest mmap threshold
total = float((x * 2).sum())
del x
release_memory()
x = torch.arange(12_000_000, dtype=torch.float32)
print(first, second, allocator_tuned(), total == float(x.sum()) * 2)
"""


def _run(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "LBNL_MALLOC_TUNING"}
    if env_value is not None:
        env["LBNL_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_is_tuned_once_and_results_unchanged() -> None:
    assert _run(None) == ["True", "True", "True", "True"]


@pytest.mark.parametrize("value", ["0", "off"])
def test_allocator_tuning_can_be_turned_off(value: str) -> None:
    assert _run(value) == ["False", "False", "False", "True"]
