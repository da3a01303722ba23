"""The ``lbnl`` command line: thin commands over the library, one module per command.

Each command module exposes ``register(subparsers)``; a command that needs an optional extra says
so (``extra`` and ``needs`` parser defaults) and is checked before any model work, so a missing
package is one clear line naming the extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Callable, Sequence

from .. import __version__
from ..errors import LBNLError

#: Modules that add subcommands, in help order.
COMMAND_MODULES = ("rerank", "eval", "train", "serve", "batch", "bench")
#: Import name -> the pip package that provides it, where they differ.
PACKAGES = {"yaml": "pyyaml", "Stemmer": "PyStemmer", "pytrec_eval": "pytrec_eval-terrier",
            "prometheus_client": "prometheus-client"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lbnl", description="Last-but-not-late listwise reranking.")
    parser.add_argument("--version", action="version", version=f"lbnl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def missing_packages(modules: Sequence[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def _missing_message(modules: Sequence[str], extra: str | None) -> str:
    names = ", ".join(PACKAGES.get(m, m) for m in modules)
    install = f"pip install 'lbnl[{extra}]'" if extra else f"pip install {' '.join(PACKAGES.get(m, m) for m in modules)}"
    return f"this command needs the optional package{'s' if len(modules) > 1 else ''} {names}: {install}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    missing = missing_packages(getattr(args, "needs", ()))
    if missing:
        print(f"error: {_missing_message(missing, getattr(args, 'extra', None))}", file=sys.stderr)
        return 2
    try:
        return func(args)
    except LBNLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"error: {_missing_message([exc.name or 'unknown'], getattr(args, 'extra', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
