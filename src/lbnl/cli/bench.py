"""``lbnl bench``: the benchmark's command (the benchmark itself is :mod:`lbnl.benchmark`)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    from ..benchmark import register as register_bench

    register_bench(subparsers)
