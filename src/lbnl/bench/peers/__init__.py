"""Peers: other inference runtimes timed by ``lbnl bench`` on the same backbone forward as lbnl's paths.

A peer path is ``FAMILY:VARIANT``:

- ``openvino:bf16``, ``openvino:f32``: OpenVINO's CPU plugin with that inference precision hint, on an IR
  converted from the PyTorch backbone (:mod:`.openvino`).
- ``onnxruntime:f32``, ``onnxruntime:int8``: ONNX Runtime's CPU provider on the exported ONNX graph, or on
  its dynamically quantized int8 version (linear layers only, as lbnl's int8) (:mod:`.onnxruntime`).
- ``llamacpp:bf16``, ``llamacpp:q8_0``: llama.cpp through llama-cpp-python on a GGUF written from the
  checkpoint, in embeddings mode without pooling (:mod:`.llamacpp`).

Every peer runs the decoder over the same token ids as lbnl and returns the final hidden states (after the
last norm) at the positions lbnl reads, the embed and rerank tokens; the bench applies the checkpoint's
projector and the spec's merge to them, so a peer scores documents too. Exports are cached under the
bench cache (``$LBNL_CACHE/bench/peers``), keyed by the checkpoint's fingerprint (shape, config, weights)
and the export version. A peer whose package is missing, or whose export fails, is skipped with the
reason (:class:`PeerUnavailable`), and so is a llama.cpp build that crashes the process (a native fault): it
first runs a short trial forward in a child process (:func:`trial`). The packages are the optional extras
``bench-peers`` (OpenVINO, ONNX Runtime) and ``bench-llamacpp`` (llama-cpp-python, compiled from source by pip).

Light at import: a peer's runtime loads when the peer is opened.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from ...errors import InvalidInputError
from .base import Backend, PeerModel, PeerUnavailable

#: Peer families and their variants, the first being the one a bare family name means in ``--peers``.
PEERS: dict[str, tuple[str, ...]] = {
    "openvino": ("bf16", "f32"),
    "onnxruntime": ("f32", "int8"),
    "llamacpp": ("bf16", "q8_0"),
}
#: The import names each family needs, and what to install for them.
PACKAGES: dict[str, tuple[str, ...]] = {
    "openvino": ("openvino",),
    "onnxruntime": ("onnxruntime", "onnx"),
    "llamacpp": ("llama_cpp",),
}
INSTALL: dict[str, str] = {
    "openvino": "pip install 'lbnl[bench-peers]' (or: pip install openvino)",
    "onnxruntime": "pip install 'lbnl[bench-peers]' (or: pip install onnxruntime onnx)",
    "llamacpp": "pip install 'lbnl[bench-llamacpp]' (or: pip install llama-cpp-python; compiles llama.cpp)",
}
#: What each variant computes in, for the bench's time estimate (which matmul peak applies).
VARIANT_DTYPE = {"bf16": "bfloat16", "f32": "float32", "int8": "float32", "q8_0": "float32"}

__all__ = ["INSTALL", "PACKAGES", "PEERS", "Backend", "PeerModel", "PeerUnavailable", "expand_peers",
           "missing_packages", "open_backend", "parse_peer", "trial", "unavailable"]

#: Token ids of the trial forward a peer runs in a child process before it is opened in the bench's own.
TRIAL_IDS = tuple(range(10, 42))
#: Families given that trial: llama.cpp is compiled here with this CPU's native flags, and one build faulted
#: (SIGSEGV in its q8_0 path on an AMX CPU); the others are binary wheels that raise Python errors.
TRIAL_IN_CHILD = frozenset({"llamacpp"})


def parse_peer(text: str) -> tuple[str, str]:
    """``(family, variant)`` of a peer path name such as ``openvino:bf16``; a clear error otherwise."""
    family, _, variant = text.strip().partition(":")
    if family not in PEERS:
        raise InvalidInputError(f"unknown peer {family!r}; use one of {', '.join(PEERS)}")
    if not variant:
        raise InvalidInputError(f"peer path {text!r} needs a variant: "
                                + ", ".join(f"{family}:{v}" for v in PEERS[family]) + f" (or --peers {family})")
    if variant not in PEERS[family]:
        raise InvalidInputError(f"unknown {family} variant {variant!r}; use one of {', '.join(PEERS[family])}")
    return family, variant


def expand_peers(text: str) -> list[str]:
    """Path names of ``--peers``: comma-separated families (every variant) or ``family:variant``; ``all``."""
    names: list[str] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        if item == "all":
            expanded = [f"{f}:{v}" for f, variants in PEERS.items() for v in variants]
        elif ":" in item:
            family, variant = parse_peer(item)
            expanded = [f"{family}:{variant}"]
        elif item in PEERS:
            expanded = [f"{item}:{v}" for v in PEERS[item]]
        else:
            raise InvalidInputError(f"unknown peer {item!r}; use one of {', '.join(PEERS)}, FAMILY:VARIANT or all")
        names += [n for n in expanded if n not in names]
    return names


def missing_packages(family: str, find_spec: Callable[[str], Any] = importlib.util.find_spec) -> list[str]:
    """The import names of ``family`` that this Python cannot find."""
    missing = []
    for name in PACKAGES[family]:
        try:
            if find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def unavailable(family: str) -> str | None:
    """Why ``family`` cannot run here (a package is missing), or ``None``."""
    missing = missing_packages(family)
    if missing:
        return f"{', '.join(missing)} not installed: {INSTALL[family]}"
    return None


def open_backend(family: str, variant: str, checkpoint: Path, cache: Path, threads: int,
                 log: Callable[[str], None] = lambda message: None) -> Backend:
    """Export (or reuse the cached export of) ``checkpoint`` for a peer and open it.

    Raises :class:`PeerUnavailable` with the reason when the package is missing, the backbone has no
    export, or the export or the runtime fails; never anything else.
    """
    reason = unavailable(family)
    if reason is not None:
        raise PeerUnavailable(reason)
    crashed = _trial_in_child(family, variant, checkpoint, cache, threads) if family in TRIAL_IN_CHILD else None
    if crashed is not None:
        raise PeerUnavailable(crashed)
    try:
        module = importlib.import_module(f"{__name__}.{family}")
        return module.open_backend(variant, checkpoint, cache, threads, log)
    except PeerUnavailable:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure of a third-party runtime or exporter skips the path
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise PeerUnavailable(f"{family}:{variant} failed to export or load: {type(exc).__name__}: "
                              f"{detail[:300]}") from exc


def trial(family: str, variant: str, checkpoint: str, cache: str, threads: int) -> None:
    """Export (or reuse) and open a peer, then run one forward of :data:`TRIAL_IDS`: what
    :func:`open_backend` runs in a child process first for :data:`TRIAL_IN_CHILD`, so that a runtime that
    faults natively takes down that child, not the bench."""
    module = importlib.import_module(f"{__name__}.{family}")
    backend = module.open_backend(variant, Path(checkpoint), Path(cache), threads, lambda message: None)
    backend.hidden(list(TRIAL_IDS), [len(TRIAL_IDS) - 1])


def _trial_in_child(family: str, variant: str, checkpoint: Path, cache: Path, threads: int) -> str | None:
    """Why the peer cannot run here if its trial forward killed the child process by a signal, else ``None`` (a
    Python error in the child is left for the in-process open to report with its message)."""
    code = (f"from lbnl.bench.peers import trial; trial({family!r}, {variant!r}, {str(checkpoint)!r}, "
            f"{str(cache)!r}, {int(threads)})")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        return f"{family}:{variant} did not finish a {len(TRIAL_IDS)}-token trial forward in an hour"
    if done.returncode >= 0:
        return None
    try:
        name = signal.Signals(-done.returncode).name
    except ValueError:
        name = f"signal {-done.returncode}"
    return (f"{family}:{variant} crashed ({name}) in a {len(TRIAL_IDS)}-token trial forward in a child process: "
            f"a fault inside the runtime on this machine")
