"""OpenVINO as a peer: ``openvino:bf16`` and ``openvino:f32``, the CPU plugin with that inference precision hint.

The IR is converted once from the PyTorch :func:`~.export.backbone_forward` module with OpenVINO's own
PyTorch frontend (``openvino.convert_model``; causal SDPA becomes OpenVINO's ScaledDotProductAttention op,
run by the CPU plugin's fused kernel) and saved with float32 weights. Both variants compile that IR: the
precision hint decides what the plugin computes in (bf16 needs AVX512-BF16 or AMX; on other CPUs the
plugin stays in float32, and the path's description says what it picked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from .base import Backend
from .export import backbone_forward, cached, example_inputs, export_dir, load_backbone, quiet

MODEL = "model.xml"


def export_ir(checkpoint: Path, cache: Path, log: Callable[[str], None]) -> Path:
    """The OpenVINO IR (float32 weights) of a checkpoint's backbone, converted once (cached)."""
    import openvino as ov
    import torch

    def build(tmp: Path) -> None:
        backbone, _, _ = load_backbone(checkpoint)
        module = backbone_forward(backbone)
        with quiet(), torch.no_grad():
            model = ov.convert_model(module, example_input=example_inputs())
        model.inputs[0].get_node().set_friendly_name("input_ids")
        ov.save_model(model, str(tmp / MODEL), compress_to_fp16=False)

    return cached(export_dir(cache, checkpoint, "openvino-ir"), MODEL, build, log) / MODEL


class OpenVinoBackend(Backend):
    def __init__(self, variant: str, model: Path, threads: int):
        import openvino as ov

        self.name = f"openvino:{variant}"
        self.variant, self.model, self.threads = variant, model, threads
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": variant, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(str(model), "CPU", config)
        self.request = self.compiled.create_infer_request()
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
        self.version = ov.get_version().split("-")[0]

    def hidden(self, ids: Sequence[int], read: Sequence[int]) -> Any:
        import numpy as np

        self.request.infer([np.asarray(ids, dtype=np.int64), np.asarray(read, dtype=np.int64)])
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def describe(self) -> str:
        return (f"OpenVINO {self.version} CPU plugin, inference precision {self.precision} "
                f"(hint {self.variant}), {self.threads} thread(s)")


def open_backend(variant: str, checkpoint: Path, cache: Path, threads: int, log: Callable[[str], None]) -> Backend:
    return OpenVinoBackend(variant, export_ir(checkpoint, cache, log), threads)
