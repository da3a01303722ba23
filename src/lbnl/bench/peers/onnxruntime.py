"""ONNX Runtime as a peer: ``onnxruntime:f32`` and ``onnxruntime:int8`` on the CPU execution provider.

The export is :func:`~.export.backbone_forward` through torch's ONNX exporter (the TorchScript one, which
is fast and emits plain MatMul nodes; the torch.export-based one, which needs onnxscript, if that fails),
saved as ``model.onnx`` with its weights in one ``model.onnx.data`` file. ``int8`` is ONNX Runtime's
dynamic quantization of that graph, restricted to MatMul nodes: int8 weights (per tensor), activations
quantized per call, the embedding table and norms left in float32, like lbnl's int8 path. Attention is
the exported graph's MatMul/Softmax (ONNX Runtime fuses no attention for a generic graph).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from .base import Backend
from .export import backbone_forward, cached, example_inputs, export_dir, load_backbone, quiet

MODEL = "model.onnx"


def _consolidate(raw: Path, out: Path) -> None:
    """Re-save an ONNX model (weights inline or one file per tensor) as ``out`` plus one ``.data`` file."""
    import onnx

    model = onnx.load(str(raw), load_external_data=True)
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=out.name + ".data", size_threshold=1024)


def export_f32(checkpoint: Path, cache: Path, log: Callable[[str], None]) -> Path:
    """The float32 ONNX export of a checkpoint's backbone, built once (cached)."""
    import torch

    def build(tmp: Path) -> None:
        backbone, _, _ = load_backbone(checkpoint)
        module = backbone_forward(backbone)
        raw = tmp / "raw"
        raw.mkdir()
        names = dict(input_names=["input_ids", "read"], output_names=["hidden"])
        with quiet(), torch.no_grad():
            try:
                torch.onnx.export(module, example_inputs(), str(raw / MODEL), dynamo=False, opset_version=17,
                                  dynamic_axes={"input_ids": {0: "tokens"}, "read": {0: "read"}, "hidden": {0: "read"}},
                                  **names)
            except Exception as legacy:  # noqa: BLE001 - the legacy exporter may be gone in a later torch
                log(f"TorchScript ONNX export failed ({type(legacy).__name__}); trying torch.export")
                tokens = torch.export.Dim("tokens", min=4, max=1 << 20)
                read = torch.export.Dim("read", min=1, max=1 << 20)
                program = torch.onnx.export(module, example_inputs(), dynamo=True, external_data=True,
                                            dynamic_shapes=({0: tokens}, {0: read}), **names)
                program.save(str(raw / MODEL), external_data=True)
        del module, backbone
        _consolidate(raw / MODEL, tmp / MODEL)
        shutil.rmtree(raw)

    return cached(export_dir(cache, checkpoint, "onnx-f32"), MODEL, build, log) / MODEL


def export_int8(f32: Path, checkpoint: Path, cache: Path, log: Callable[[str], None]) -> Path:
    """ONNX Runtime's dynamic int8 quantization of the float32 export (MatMul weights only), built once."""

    def build(tmp: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with quiet():
            quantize_dynamic(str(f32), str(tmp / MODEL), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=False, use_external_data_format=True)

    return cached(export_dir(cache, checkpoint, "onnx-int8"), MODEL, build, log) / MODEL


class OnnxRuntimeBackend(Backend):
    def __init__(self, variant: str, model: Path, threads: int, heads: int):
        import onnxruntime as ort

        self.name = f"onnxruntime:{variant}"
        self.variant, self.model, self.threads = variant, model, threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = False  # give activations back after each call, as the other paths do
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        self.heads = heads

    def hidden(self, ids: Sequence[int], read: Sequence[int]) -> Any:
        import numpy as np

        feed = {"input_ids": np.asarray(ids, dtype=np.int64), "read": np.asarray(read, dtype=np.int64)}
        return np.asarray(self.session.run(["hidden"], feed)[0], dtype=np.float32)

    #: Bytes per head and token pair a forward held beyond the weights, measured: 13.3 GB (float32) and 4.3 GB
    #: (int8) for a 2,048-token forward of the Qwen3-0.6B shape (16 heads), one thread, arena off.
    BYTES_PER_HEAD_PAIR = {"f32": 200, "int8": 65}

    def activation_bytes(self, tokens: int) -> int:
        """The exported attention is MatMul, mask, Softmax over float32 scores of every head and token pair, and
        ONNX Runtime held far more than one copy of them (:data:`BYTES_PER_HEAD_PAIR`, measured)."""
        return self.BYTES_PER_HEAD_PAIR[self.variant] * self.heads * tokens * tokens

    def describe(self) -> str:
        what = "float32" if self.variant == "f32" else "dynamic int8 MatMul (int8 weights, per-call activations)"
        return f"ONNX Runtime {self.version} CPU, {what}, {self.threads} thread(s)"


def open_backend(variant: str, checkpoint: Path, cache: Path, threads: int, log: Callable[[str], None]) -> Backend:
    model = export_f32(checkpoint, cache, log)
    if variant == "int8":
        model = export_int8(model, checkpoint, cache, log)
    import json

    heads = json.loads((checkpoint / "config.json").read_text())["num_attention_heads"]
    return OnnxRuntimeBackend(variant, model, threads, heads)
