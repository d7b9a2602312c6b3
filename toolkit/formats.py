"""Every format `toolkit export` writes, in one table (Ultralytics' ``export_formats()`` is the model): how to ask
for it, its files per precision, the engine that measures it, the extra that installs it and the options that
apply. `toolkit formats` prints it; the CLI, the recipe schema and the exporters take their names and file names
from it. Plain data: the CLI reads it before importing torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from runtime.errors import ToolkitError, did_you_mean

GUARD_OPTIONS = ("--calib-size", "--calib-method", "--tolerance", "--min-agreement", "--max-class-drop", "--max-kl",
                 "--held-out-images", "--allow-fail")  # fmt: skip
ONNX_INT8_OPTIONS = (*GUARD_OPTIONS, "--max-float-layers", "--keep-float", "--keep-float-from", "--calib-seeds",
                     "--recover")  # fmt: skip


@dataclass(frozen=True)
class ExportFormat:
    name: str
    ask: str  # the flags that write it
    files: dict[str, str]  # precision -> file, relative to the run directory
    engines: tuple[str, ...]  # the runtime/targets.yaml backends that run and measure it
    extra: str | None  # pip extra that installs its exporter (None: the base `train` install)
    packages: tuple[str, ...]  # modules its exporter imports (what "installed here" checks, without importing)
    options: tuple[str, ...]  # `toolkit export` options that apply to it
    description: str

    def file(self, precision: str) -> str:
        if precision not in self.files:
            raise ToolkitError(f"format {self.name} has no {precision} file (it has {', '.join(self.files)})")
        return self.files[precision]

    def missing(self) -> str | None:
        """The first of its packages not installed here, or None."""
        return next((p for p in self.packages if importlib.util.find_spec(p) is None), None)


FORMATS = {
    "onnx": ExportFormat("onnx", "always", {"fp32": "model.onnx"}, ("onnxruntime",), None, ("onnx", "onnxruntime"),
                         ("--opset", "--slim"), "ONNX FP32, parity-checked against PyTorch"),
    "fp16": ExportFormat("fp16", "--fp16", {"fp16": "model.fp16.onnx"}, ("onnxruntime", "tensorrt"), None,
                         ("onnxconverter_common",), (),
                         "ONNX FP16 compute, FP32 inputs/outputs; TensorRT FP16 engine where a GPU is"),
    "onnxruntime": ExportFormat("onnxruntime", "--int8 --backend onnxruntime", {"int8": "model.int8.onnx"},
                                ("onnxruntime",), None, ("onnxruntime",), ONNX_INT8_OPTIONS,
                                "Q/DQ U8S8, per-channel weights (ONNX Runtime CPU)"),
    "tensorrt": ExportFormat("tensorrt", "--int8 --backend tensorrt", {"int8": "model.int8.tensorrt.onnx"},
                             ("tensorrt",), "tensorrt (engine), modelopt (--tensorrt-quantizer modelopt)",
                             ("onnxruntime",), (*ONNX_INT8_OPTIONS, "--tensorrt-quantizer"),
                             "Q/DQ S8S8 symmetric for TensorRT; its INT8 engine where TensorRT and a GPU are"),
    "openvino": ExportFormat("openvino", "--backend openvino [--int8]",
                             {"fp32": "model.openvino/model.xml", "int8": "model.int8.openvino/model.xml"},
                             ("openvino",), "openvino", ("openvino", "nncf"), (*GUARD_OPTIONS, "--recover"),
                             "OpenVINO IR; INT8 by NNCF with its accuracy control"),
    "executorch": ExportFormat("executorch", "--format executorch [--int8]",
                               {"fp32": "model.pte", "int8": "model.int8.pte"}, ("executorch",), "mobile",
                               ("executorch",), GUARD_OPTIONS, "ExecuTorch program, XNNPACK delegate"),
    "ncnn": ExportFormat("ncnn", "--format ncnn [--int8]",
                         {"fp32": "model.ncnn/model.param", "int8": "model.int8.ncnn/model.param"}, ("ncnn",),
                         "mobile", ("pnnx", "ncnn"), GUARD_OPTIONS,
                         "NCNN param/bin through PNNX; INT8 conv/fc layers with a minmax calibration table"),
    "coreml": ExportFormat("coreml", "--format coreml [--int8: macOS]",
                           {"fp16": "model.mlpackage", "int8": "model.int8.mlpackage"}, ("coreml",), "mobile",
                           ("coremltools",), GUARD_OPTIONS,
                           "Core ML ML Program, FP16; W8A8 INT8 calibrated through Core ML (both run on macOS)"),
    "litert": ExportFormat("litert", "--format litert [--int8]", {"fp32": "model.tflite", "int8": "model.int8.tflite"},
                           ("litert",), "litert (scripts/install-litert.sh)",
                           ("litert_torch", "ai_edge_litert", "litert_converter", "jax"), GUARD_OPTIONS,
                           "LiteRT (TFLite) through litert-torch; INT8 full integer (int8 input and output)"),
}  # fmt: skip
INT8_BACKENDS = ("onnxruntime", "tensorrt", "openvino")  # `--backend`: one INT8 form each
MOBILE = ("executorch", "ncnn", "coreml", "litert")  # `--format`


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ToolkitError(f"format {name!r} is not one of {', '.join(FORMATS)}." + did_you_mean(name, FORMATS))
    return FORMATS[name]
