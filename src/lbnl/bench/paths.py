"""The path mini-language: which ways of scoring a run compares (``--paths``, comma-separated).

- ``reference-fp32``, ``reference-bf16``: the official remote code's computation, re-implemented
  (:mod:`lbnl.bench.reference`).
- ``hf``: lbnl's reranker with ``fast_forward=False`` (the plain transformers forward), float32.
- ``default``, ``fast``, ``fastest``: lbnl's presets (:data:`lbnl.hardware.PRESETS`); ``default`` and
  ``fast`` in float32, ``fastest`` with the weights it picks on this machine (:func:`lbnl.hardware.fastest_weights`).
- ``default-bf16``, ``fast-bf16``: the same in bfloat16 (what ``default`` computes for the official
  bf16 checkpoint on a CPU with AMX or AVX512-BF16).
- ``pointwise``: one prompt per document, as separate queries in one batched call.
- custom: ``lbnl:opt:opt...`` with options ``block=N``, ``int8`` (the decoder's matmuls in int8,
  :mod:`lbnl.int8`, with outlier channels), ``int8plain`` (the same without), ``int8dyn`` (torch.ao
  dynamic quantization, float32), ``bf16``, ``hf``, ``pointwise``,
  ``compile`` (``torch.compile`` of the fast path's norms and SiLU product), ``mm=int_mm`` or
  ``mm=onednn`` (how int8 matmuls run, :data:`lbnl.int8.MATMUL_BACKENDS`; default: what this CPU uses), ``attn=sdpa``,
  ``attn=chunked``, ``attn=int8`` or ``attn=amx`` (the fast path's attention kernel; default: what ``auto``
  picks on this machine).
- peers, other runtimes on the same backbone forward (:mod:`lbnl.bench.peers`): ``openvino:bf16``,
  ``openvino:f32``, ``onnxruntime:f32``, ``onnxruntime:int8``, ``llamacpp:bf16``, ``llamacpp:q8_0``
  (``--peers`` adds them by family).

Light at import: :mod:`lbnl.hardware` (torch) loads when a preset is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError

DEFAULT_PATHS = ("reference-fp32", "reference-bf16", "hf", "default", "default-bf16", "fast-bf16", "fastest")
ALIASES = {
    "reference-fp32": "reference:fp32",
    "reference-bf16": "reference:bf16",
    "hf": "lbnl:hf",
    "default": "lbnl",
    "default-bf16": "lbnl:bf16",
    "fast": "lbnl:preset=fast",
    "fast-bf16": "lbnl:preset=fast:bf16",
    "fastest": "lbnl:preset=fastest",
    "pointwise": "lbnl:pointwise",
    "pointwise-hf": "lbnl:pointwise:hf",
}


@dataclass
class PathSpec:
    """One way of scoring, parsed from ``reference:fp32`` or ``lbnl:block=16:int8`` (or an alias)."""

    name: str
    kind: str
    dtype: str = "float32"
    block_size: int = 125
    quantize: str | None = None
    fast_forward: bool = True
    pointwise: bool = False
    compile: bool = False
    attention: str = "auto"
    #: The int8 matmul backend (``None``: :func:`lbnl.hardware.int8_backend`).
    int8_backend: str | None = None
    #: A peer runtime (``openvino``, ``onnxruntime``, ``llamacpp``) and its variant, for ``kind == "peer"``.
    peer: str | None = None
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "PathSpec":
        from ..hardware import PRESETS, fastest_weights

        from .peers import PEERS, VARIANT_DTYPE, parse_peer

        spec = ALIASES.get(text, text)
        kind, *options = spec.split(":")
        if kind in PEERS:
            family, variant = parse_peer(spec)
            return cls(name=text, kind="peer", dtype=VARIANT_DTYPE[variant], peer=family, variant=variant)
        if kind not in ("reference", "lbnl"):
            raise InvalidInputError(f"unknown path {text!r}; use {', '.join(ALIASES)}, lbnl:OPTION:OPTION... or a "
                                    f"peer ({', '.join(f'{f}:VARIANT' for f in PEERS)})")
        path = cls(name=text, kind=kind)
        for option in options:
            key, _, value = option.partition("=")
            if key in ("fp32", "float32"):
                path.dtype = "float32"
            elif key in ("bf16", "bfloat16"):
                path.dtype = "bfloat16"
            elif key == "int8" and kind == "lbnl":
                path.quantize = "int8"
            elif key == "int8plain" and kind == "lbnl":
                path.quantize = "int8-plain"
            elif key == "int8dyn" and kind == "lbnl":
                path.quantize = "int8-dynamic"
            elif key == "hf" and kind == "lbnl":
                path.fast_forward = False
            elif key == "pointwise" and kind == "lbnl":
                path.pointwise, path.block_size = True, 1
            elif key == "compile" and kind == "lbnl":
                path.compile = True
            elif key == "mm" and kind == "lbnl" and value in ("int_mm", "onednn"):
                path.int8_backend = value
            elif key == "attn" and kind == "lbnl" and value in ("sdpa", "chunked", "int8", "amx"):
                path.attention = value
            elif key == "block" and kind == "lbnl" and value.isdigit() and int(value) > 0:
                path.block_size = int(value)
            elif key == "preset" and kind == "lbnl" and value in PRESETS:
                path.block_size, path.quantize = PRESETS[value].block_size, PRESETS[value].quantize
                if path.quantize == "auto":
                    quantize, dtype = fastest_weights("cpu", None)
                    path.quantize, path.dtype = quantize, dtype or path.dtype
            else:
                raise InvalidInputError(f"path {text!r}: unknown option {option!r}")
        return path

    def describe(self) -> str:
        if self.kind == "reference":
            return f"official path (AutoModelForCausalLM, hidden states, 125/prompt), {self.dtype}"
        if self.kind == "peer":
            return f"peer {self.peer}, {self.variant}, {self.block_size}/prompt"
        parts = ["pointwise" if self.pointwise else f"{self.block_size}/prompt", self.dtype]
        parts += [{"int8": "int8 matmuls (W8A8, outlier channels)", "int8-plain": "int8 matmuls (W8A8)",
                   "int8-dynamic": "int8 dynamic (torch.ao)"}.get(
            self.quantize, self.quantize)] if self.quantize else []
        parts += ["transformers forward"] if not self.fast_forward else []
        parts += [f"int8 matmuls via {self.int8_backend}"] if self.int8_backend else []
        parts += ["torch.compile"] if self.compile else []
        parts += [f"{self.attention} attention"] if self.attention != "auto" else []
        return "lbnl, " + ", ".join(parts)
