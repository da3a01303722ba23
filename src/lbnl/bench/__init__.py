"""``lbnl bench``: the official inference path, lbnl's defaults and lbnl's fast settings, side by side.

One run loads one checkpoint, builds the same inputs for every path (real SciFact text cut to an
exact token length, or synthetic text when the data is absent) and times the paths interleaved.
It reports documents/s, tokens/s, latency, peak RSS, achieved FLOP/s as a fraction of the
machine's measured matmul peak, the speed ratio against the reference path, and how far each
path's scores are from the reference's.

One module per concept, so each can be read and tested alone:

- :mod:`~lbnl.bench.workloads`: ``QUERIESxDOCUMENTSxTOKENS`` and the inputs built for it
- :mod:`~lbnl.bench.flops`: the FLOP model every path is charged with
- :mod:`~lbnl.bench.peaks`: the machine's measured matmul peaks
- :mod:`~lbnl.bench.memory`: resident memory and the RSS peak sampler
- :mod:`~lbnl.bench.paths`: the path mini-language (``--paths``) and its aliases
- :mod:`~lbnl.bench.reference`: the official path, re-implemented
- :mod:`~lbnl.bench.loader`: models loaded once per path settings, and their scorers
- :mod:`~lbnl.bench.runner`: timing every path on every workload
- :mod:`~lbnl.bench.report`: the tables
- :mod:`~lbnl.bench.peers`: other runtimes (OpenVINO, ONNX Runtime, llama.cpp) on the same forward,
  optional (extras ``bench-peers``, ``bench-llamacpp``)

The command line lives in :mod:`lbnl.cli.bench`; this package never imports the CLI. It stays
light at import: torch and transformers load when a bench runs.
"""

from __future__ import annotations

from .flops import DecoderShape, prompt_lengths
from .loader import LbnlScorer, Loader, materialize
from .memory import RssPeak, mem_available, rss
from .paths import ALIASES, DEFAULT_PATHS, PathSpec
from .peaks import measure_peaks
from .reference import ReferenceScorer
from .report import format_report
from .runner import (ASSUMED_EFFICIENCY, DEFAULT_TIME_CAP, SHAPES, PathResult, bench_checkpoint, run_bench,
                     run_forward_workload, run_workload)
from .workloads import (DEFAULT_WORKLOADS, QUICK_WORKLOADS, ForwardWorkload, Workload, build_inputs, find_scifact,
                        forward_prompt, parse_workload)

__all__ = [
    "ALIASES", "ASSUMED_EFFICIENCY", "DEFAULT_PATHS", "DEFAULT_TIME_CAP", "DEFAULT_WORKLOADS", "QUICK_WORKLOADS",
    "SHAPES", "DecoderShape", "ForwardWorkload", "LbnlScorer", "Loader", "PathResult", "PathSpec", "ReferenceScorer",
    "RssPeak", "Workload", "bench_checkpoint", "build_inputs", "find_scifact", "format_report", "forward_prompt",
    "materialize", "measure_peaks", "mem_available", "parse_workload", "prompt_lengths", "rss", "run_bench",
    "run_forward_workload", "run_workload",
]
