"""Inference sessions that carry their preprocessing contract: ONNX Runtime, OpenVINO IR, TensorRT engines,
ExecuTorch programs, NCNN models.

No torch at import: this is what runs on the device (ExecuTorch's Python runtime imports torch when an
ExecuTorch session opens). ``toolkit export`` writes the metadata read here (ONNX metadata_props; OpenVINO
rt_info under toolkit/preprocess; a TensorRT engine's ``<engine>.json`` sidecar, since engines hold no
metadata; an ExecuTorch program's constant methods; an NCNN model's model.json). Engines are imported when
first used. A raw image goes in through ``classify`` and a label comes out.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.metrics import softmax
from runtime.preprocess import PreprocessContract
from runtime.session_settings import check_settings

META_PREPROCESS = "toolkit.preprocess"
META_FORMAT = "toolkit.format"
META_INT8_TARGET = "toolkit.int8_target"
# TensorRT's INT8 form keeps biases in float. ONNX Runtime's WeightBiasQuantization optimisation (1.21+) would
# quantize them to int32 when a session loads, and wrongly for per-channel weights (a MobileNetV2's S8S8 file:
# 64% agreement with the same graph run as written, 99.3% with this optimisation off). ONNX Runtime stands in for
# TensorRT there, so it runs the graph as written.
TENSORRT_FORM_DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]
OV_PREPROCESS = ["toolkit", "preprocess"]
# An ExecuTorch program's constant methods that hold the contract and the file format (export/executorch_export).
EXECUTORCH_PREPROCESS_METHOD = "toolkit_preprocess"
EXECUTORCH_FORMAT_METHOD = "toolkit_format"
EXECUTORCH_PRECISION_METHOD = "toolkit_precision"
# An NCNN model's contract and blob names, beside model.param (its param file holds no metadata).
NCNN_SIDECAR = "model.json"
# A Core ML model's user-defined metadata keys.
COREML_META_PREPROCESS = META_PREPROCESS
COREML_META_FORMAT = META_FORMAT


class Classifier(ABC):
    """A model file with its contract: ``run`` a preprocessed batch, or ``predict`` a whole dataset."""

    path: Path
    contract: PreprocessContract
    static_batch: int | None = None

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Engine call on a validated batch."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 batch -> logits."""
        h, w = self.contract.input_size
        if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise ToolkitError(
                f"{self.path}: input must be float32 (N, 3, {h}, {w}), got {batch.dtype} {tuple(batch.shape)}"
            )
        if self.static_batch and batch.shape[0] != self.static_batch:
            raise ToolkitError(f"{self.path}: this session was built for batches of {self.static_batch}, "
                               f"got {batch.shape[0]}")  # fmt: skip
        return self._infer(batch)

    def predict(self, dataset: Dataset, batch_size: int = 64) -> np.ndarray:
        """Logits for every item of ``dataset`` through this model's own preprocessing."""
        return np.concatenate([self.run(b) for b in contract_batches(dataset, self.contract, batch_size)])

    def classify(self, images: list[Image.Image]) -> list[tuple[str, float]]:
        """Raw PIL images -> (label, softmax score) each, through the model's own preprocessing."""
        probs = softmax(self.run(self.contract.batch(images)))
        return [(self.contract.class_names[i], float(p[i])) for p, i in zip(probs, probs.argmax(1))]

    def input_spec(self) -> dict[str, object]:
        """What ``run`` accepts: name-free shape (batch dimension dynamic) and dtype."""
        h, w = self.contract.input_size
        return {"shape": ["N", 3, h, w], "dtype": "float32"}


class OnnxClassifier(Classifier):
    """An ONNX model run with ONNX Runtime (CPU execution provider unless told otherwise)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: list[str] | None = None,
        threads: int | None = None,
        provider_options: dict[str, object] | None = None,
        settings: dict[str, object] | None = None,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        settings = check_settings("onnxruntime", settings or {}, str(self.path))
        if not self.path.is_file():
            raise ToolkitError(f"{self.path}: ONNX model not found")
        providers = providers or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise ToolkitError(
                f"{self.path}: execution provider {', '.join(missing)} is not available in this onnxruntime "
                f"(it has {', '.join(ort.get_available_providers())}); install the matching onnxruntime build"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        level = settings.get("graph_optimization")
        if level:
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[str(level)])
        if "allow_spinning" in settings:
            options.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if settings["allow_spinning"] else "0"
            )
        self.static_batch = settings.get("static_batch")  # type: ignore[assignment]
        opts = [dict(provider_options or {}) if p == providers[0] else {} for p in providers]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers, provider_options=opts)
            disabled = {}
            if self.session.get_modelmeta().custom_metadata_map.get(META_INT8_TARGET) == "tensorrt":
                disabled = {"disabled_optimizers": TENSORRT_FORM_DISABLED_OPTIMIZERS}
            batch_dim = self.session.get_inputs()[0].shape[0]
            if self.static_batch and isinstance(batch_dim, str):  # reload with the batch dimension fixed
                options.add_free_dimension_override_by_name(batch_dim, int(self.static_batch))
            if disabled or (self.static_batch and isinstance(batch_dim, str)):
                self.session = ort.InferenceSession(str(self.path), options, providers=providers,
                                                    provider_options=opts, **disabled)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for corrupt files
            raise ToolkitError(f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_PREPROCESS not in meta:
            raise ToolkitError(f"{self.path}: no '{META_PREPROCESS}' metadata; export it with `toolkit export`")
        self.contract = load_contract(self.path, meta[META_PREPROCESS])
        graph_input = self.session.get_inputs()[0]
        check_input_shape(self.path, [d if isinstance(d, int) else None for d in graph_input.shape], self.contract)
        self.input_name = graph_input.name
        self.output_name = self.session.get_outputs()[0].name
        self.binding = self.session.io_binding() if settings.get("io_binding") else None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            if self.binding is not None:
                self.binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
                self.binding.bind_output(self.output_name)
                self.session.run_with_iobinding(self.binding)
                return self.binding.copy_outputs_to_cpu()[0]
            return self.session.run(None, {self.input_name: batch})[0]
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types
            raise ToolkitError(f"{self.path}: ONNX Runtime failed on a {tuple(batch.shape)} batch ({exc})") from exc


class OpenVinoClassifier(Classifier):
    """An OpenVINO IR (model.xml + model.bin) compiled for a device (CPU by default)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "CPU",
        threads: int | None = None,
        settings: dict[str, object] | None = None,
    ):
        import openvino as ov

        self.path = Path(path)
        settings = check_settings("openvino", settings or {}, str(self.path))
        if not self.path.is_file():
            raise ToolkitError(f"{self.path}: OpenVINO IR not found")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for bad IR
            raise ToolkitError(f"{self.path}: OpenVINO cannot read it ({type(exc).__name__}: {exc})") from exc
        if not model.has_rt_info(OV_PREPROCESS):
            raise ToolkitError(f"{self.path}: no toolkit/preprocess rt_info; export it with `toolkit export`")
        self.contract = load_contract(self.path, model.get_rt_info(OV_PREPROCESS).astype(str))
        shape = model.inputs[0].get_partial_shape()
        check_input_shape(self.path, [d.get_length() if d.is_static else None for d in shape], self.contract)
        config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        if device.upper().startswith("CPU"):
            # On CPUs with native bf16 (avx512_bf16, AMX) OpenVINO's default runs float layers in bf16: the
            # artifact's numbers would not be its fp32 weights' (parity fails). INT8 layers stay INT8.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if settings.get("performance_hint", "none") != "none":
            config["PERFORMANCE_HINT"] = settings["performance_hint"]
        if "num_streams" in settings:
            config["NUM_STREAMS"] = settings["num_streams"]
        if "cpu_pinning" in settings:
            config["ENABLE_CPU_PINNING"] = settings["cpu_pinning"]
        self.static_batch = settings.get("static_batch")  # type: ignore[assignment]
        if self.static_batch:
            h, w = self.contract.input_size
            model.reshape({model.inputs[0]: [int(self.static_batch), 3, h, w]})
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()  # one request reused, as a deployed program does

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch}, share_inputs=True, share_outputs=True)
        return self.request.get_output_tensor(0).data.copy()


class TensorRTClassifier(Classifier):
    """A serialized TensorRT engine (built on this GPU model) run through cuda-python, without torch."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        sidecar = self.path.with_name(self.path.name + ".json")
        for f in (self.path, sidecar):
            if not f.is_file():
                raise ToolkitError(f"{f}: not found (`toolkit export --int8 --backend tensorrt` writes both)")
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as exc:
            raise ToolkitError(f"{self.path}: running an engine needs tensorrt and cuda-python ({exc})") from exc
        try:
            meta = json.loads(sidecar.read_text())
            self.contract = PreprocessContract.from_dict(meta["preprocess"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ToolkitError(f"{sidecar}: not a valid engine sidecar ({exc!r}); re-export the engine") from exc
        self._cudart = cudart
        props = self._check(cudart.cudaGetDeviceProperties(0))
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)  # type: ignore[attr-defined]
        check_engine_sidecar(meta, trt.__version__, gpu.rstrip("\x00"), str(self.path))
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise ToolkitError(f"{self.path}: TensorRT cannot deserialize it (built by another TensorRT or GPU?)")
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = self._check(cudart.cudaStreamCreate())
        self._buffers: dict[tuple[int, ...], tuple[int, int, np.ndarray]] = {}

    def _check(self, result: tuple) -> object:
        err, *value = result
        if int(err) != 0:
            raise ToolkitError(f"{self.path}: CUDA error {err}")
        return value[0] if value else None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        batch = np.ascontiguousarray(batch)
        self.context.set_input_shape(self.input_name, batch.shape)
        if batch.shape not in self._buffers:
            out = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), np.float32)
            d_in = self._check(cudart.cudaMalloc(batch.nbytes))
            d_out = self._check(cudart.cudaMalloc(out.nbytes))
            self._buffers[batch.shape] = (d_in, d_out, out)
        d_in, d_out, out = self._buffers[batch.shape]
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(cudart.cudaMemcpyAsync(d_in, batch.ctypes.data, batch.nbytes, h2d, self.stream))
        self.context.set_tensor_address(self.input_name, int(d_in))
        self.context.set_tensor_address(self.output_name, int(d_out))
        if not self.context.execute_async_v3(self.stream):
            raise ToolkitError(f"{self.path}: TensorRT execution failed")
        self._check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, self.stream))
        self._check(cudart.cudaStreamSynchronize(self.stream))
        return out.copy()

    def __del__(self) -> None:
        for d_in, d_out, _ in getattr(self, "_buffers", {}).values():
            self._cudart.cudaFree(d_in)
            self._cudart.cudaFree(d_out)


class ExecuTorchClassifier(Classifier):
    """An ExecuTorch program (.pte, XNNPACK delegate) run by ExecuTorch's Python runtime, which itself imports
    torch (on a phone the same file runs under ExecuTorch's C++ runtime, without it)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ToolkitError(f"{self.path}: ExecuTorch program not found")
        try:
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise ToolkitError(f"{self.path}: running it needs executorch (pip install "
                               f"'edge-distill-toolkit[mobile]'): {exc}") from exc  # fmt: skip
        if threads:
            # XNNPACK's thread pool is one per process: the latest session's thread count holds for all.
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        try:
            program = Runtime.get().load_program(self.path)
        except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError for bad files
            raise ToolkitError(f"{self.path}: ExecuTorch cannot load it ({type(exc).__name__}: {exc})") from exc
        if EXECUTORCH_PREPROCESS_METHOD not in program.method_names:
            raise ToolkitError(f"{self.path}: no {EXECUTORCH_PREPROCESS_METHOD} method; export it with "
                               "`toolkit export --format executorch`")  # fmt: skip
        text = program.load_method(EXECUTORCH_PREPROCESS_METHOD).execute([])[0]
        self.contract = load_contract(self.path, text)
        self.precision = (program.load_method(EXECUTORCH_PRECISION_METHOD).execute([])[0]
                          if EXECUTORCH_PRECISION_METHOD in program.method_names else "fp32")  # fmt: skip
        self.method = program.load_method("forward")
        # Memory is planned for a largest batch (below the exported bound: 15 for a bound of 64 here); larger
        # batches run in chunks of it.
        self.max_batch = int(self.method.metadata.input_tensor_meta(0).sizes()[0])
        self._torch = __import__("torch")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            chunks = [batch[i : i + self.max_batch] for i in range(0, len(batch), self.max_batch)]
            return np.concatenate([self.method.execute([self._torch.from_numpy(c)])[0].numpy() for c in chunks])
        except Exception as exc:  # noqa: BLE001
            raise ToolkitError(f"{self.path}: ExecuTorch failed on a {tuple(batch.shape)} batch ({exc})") from exc


class NcnnClassifier(Classifier):
    """An NCNN model (model.param + model.bin + the model.json contract), one image per extractor call: NCNN's
    Mat has no batch axis. FP32 arithmetic (NCNN's fp16 storage and arithmetic off), as exported."""

    def __init__(
        self, path: str | os.PathLike[str], threads: int | None = None, settings: dict[str, object] | None = None
    ):
        self.path = Path(path)
        settings = check_settings("ncnn", settings or {}, str(self.path))
        sidecar = self.path.with_name(NCNN_SIDECAR)
        for f in (self.path, self.path.with_suffix(".bin"), sidecar):
            if not f.is_file():
                raise ToolkitError(f"{f}: not found (`toolkit export --format ncnn` writes model.param, model.bin "
                                   f"and {NCNN_SIDECAR})")  # fmt: skip
        try:
            import ncnn
        except ImportError as exc:
            raise ToolkitError(f"{self.path}: running it needs ncnn (pip install ncnn): {exc}") from exc
        try:
            meta = json.loads(sidecar.read_text())
            self.contract = PreprocessContract.from_dict(meta["preprocess"])
            self.input_name, self.output_name = str(meta["input"]), str(meta["output"])
        except (ValueError, KeyError, TypeError, ToolkitError) as exc:
            raise ToolkitError(
                f"{sidecar}: not a valid NCNN sidecar ({exc!r}); re-export with `toolkit export`"
            ) from exc
        self._ncnn = ncnn
        self.net = ncnn.Net()
        for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(self.net.opt, flag, False)
        self.net.opt.num_threads = threads or os.cpu_count() or 1
        if "winograd" in settings:  # NCNN's default is on; at small inputs its transforms cost more than they save
            self.net.opt.use_winograd_convolution = bool(settings["winograd"])
        if self.net.load_param(str(self.path)) != 0 or self.net.load_model(str(self.path.with_suffix(".bin"))) != 0:
            raise ToolkitError(f"{self.path}: ncnn cannot load it (or its .bin); re-export with `toolkit export`")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        for image in batch:
            extractor = self.net.create_extractor()
            extractor.input(self.input_name, self._ncnn.Mat(np.ascontiguousarray(image)).clone())
            status, out = extractor.extract(self.output_name)
            if status != 0:
                raise ToolkitError(f"{self.path}: ncnn failed on an image (status {status})")
            rows.append(np.array(out, dtype=np.float32).reshape(-1))
        return np.stack(rows)


class CoreMLClassifier(Classifier):
    """A Core ML ML Program (.mlpackage) run by Core ML: macOS only (coremltools converts anywhere, but its
    prediction calls Core ML itself)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ToolkitError(f"{self.path}: Core ML package not found (`toolkit export --format coreml` writes it)")
        reason = coreml_unavailable_reason()
        if reason:
            raise ToolkitError(f"{self.path}: {reason}")
        import coremltools as ct

        self.model = ct.models.MLModel(str(self.path))
        spec = self.model.get_spec()
        text = dict(spec.description.metadata.userDefined).get(COREML_META_PREPROCESS)
        if text is None:
            raise ToolkitError(f"{self.path}: no {COREML_META_PREPROCESS} metadata; export it with `toolkit export`")
        self.contract = load_contract(self.path, text)
        problems = coreml_spec_problems(spec, self.contract)
        if problems:
            raise ToolkitError(f"{self.path}: {'; '.join(problems)}")
        self.input_name = spec.description.input[0].name
        self.output_name = spec.description.output[0].name

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        out = self.model.predict({self.input_name: batch})[self.output_name]
        return np.asarray(out, dtype=np.float32)


def coreml_unavailable_reason() -> str | None:
    """None where Core ML predicts (macOS with coremltools), else why not."""
    import platform

    if platform.system() != "Darwin":
        return "Core ML predicts on macOS only (here it converts and checks the spec)"
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return "coremltools is not installed (pip install coremltools)"
    return None


def coreml_spec_problems(spec: Any, contract: PreprocessContract) -> list[str]:
    """What is wrong with a Core ML classifier's spec for ``contract`` (empty: nothing): one float32 input
    (N, 3, H, W) with the batch flexible, one output (N, classes), the contract in its metadata."""
    problems = []
    h, w = contract.input_size
    inputs, outputs = spec.description.input, spec.description.output
    if len(inputs) != 1 or len(outputs) != 1:
        return [f"expected one input and one output, got {len(inputs)} and {len(outputs)}"]
    array = inputs[0].type.multiArrayType
    ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
    if len(ranges) != 4 or ranges[1:] != [(3, 3), (h, h), (w, w)] or ranges[0][0] != 1:
        problems.append(f"input {inputs[0].name} has shape ranges {ranges}, expected [(1, N), (3, 3), ({h}, {h}), "
                        f"({w}, {w})]")  # fmt: skip
    if array.dataType != 65568:  # ArrayFeatureType.FLOAT32
        problems.append(f"input {inputs[0].name} is not float32")
    text = dict(spec.description.metadata.userDefined).get(COREML_META_PREPROCESS)
    if text is None or PreprocessContract.from_dict(json.loads(text)) != contract:
        problems.append(f"its {COREML_META_PREPROCESS} metadata is missing or differs from the export's contract")
    return problems


def check_engine_sidecar(sidecar: dict[str, Any], tensorrt_version: str, gpu: str, engine: str) -> None:
    """An engine runs only on the TensorRT version and GPU model it was built with: a mismatch is an error saying
    how to rebuild (sidecars from before versions were recorded are taken as they are)."""
    rebuild = "rebuild it here from the run's ONNX files with `toolkit engine RUN` (or trtexec on the ONNX file)"
    built_with, built_for = sidecar.get("tensorrt"), sidecar.get("gpu")
    if built_with and str(built_with).split(".")[:2] != tensorrt_version.split(".")[:2]:
        raise ToolkitError(
            f"{engine}: built with TensorRT {built_with}, this is TensorRT {tensorrt_version}; {rebuild}"
        )
    if built_for and built_for != gpu:
        raise ToolkitError(f"{engine}: built for a {built_for}, this GPU is a {gpu}; engines do not move between GPU "
                           f"models: {rebuild}")  # fmt: skip


def open_classifier(
    path: str | os.PathLike[str],
    providers: list[str] | None = None,
    threads: int | None = None,
    provider_options: dict[str, object] | None = None,
    device: str = "CPU",
    settings: dict[str, object] | None = None,
) -> Classifier:
    """The right session for a model file, by its kind: .onnx, OpenVINO .xml, a TensorRT .engine, an
    ExecuTorch .pte, an NCNN .param, a Core ML .mlpackage or a LiteRT .tflite."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxClassifier(path, providers, threads, provider_options, settings)
    if path.suffix == ".xml":
        return OpenVinoClassifier(path, device, threads, settings)
    if path.suffix in (".engine", ".plan"):
        return TensorRTClassifier(path)
    if path.suffix == ".pte":
        return ExecuTorchClassifier(path, threads)
    if path.suffix == ".param":
        return NcnnClassifier(path, threads, settings)
    if path.suffix == ".mlpackage":
        return CoreMLClassifier(path)
    if path.suffix == ".tflite":
        from runtime.litert import LiteRTClassifier

        return LiteRTClassifier(path, threads)
    raise ToolkitError(
        f"{path}: unknown model kind; expected .onnx, OpenVINO .xml, TensorRT .engine, ExecuTorch .pte, NCNN .param, "
        "Core ML .mlpackage or LiteRT .tflite"
    )


_ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}  # fmt: skip


def load_contract(path: Path, text: str) -> PreprocessContract:
    """The contract stored in a model file, or an error naming the file when it is not valid."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return PreprocessContract.from_dict(data)
    except (ValueError, TypeError, ToolkitError) as exc:
        raise ToolkitError(
            f"{path}: its preprocessing metadata is invalid ({exc}); re-export it with `toolkit export`"
        ) from exc


def check_input_shape(path: Path, shape: list[int | None], contract: PreprocessContract) -> None:
    """The graph's input (N, 3, H, W) must agree with the contract's input size wherever it is static."""
    h, w = contract.input_size
    want = [None, 3, h, w]
    if len(shape) != 4 or any(s is not None and s != v for s, v in zip(shape[1:], want[1:])):
        got = "x".join(("N" if i == 0 else "?") if s is None else str(s) for i, s in enumerate(shape))
        raise ToolkitError(
            f"{path}: the model's input is {got} but its preprocessing metadata says Nx3x{h}x{w}; "
            "re-export the model so that both agree"
        )


def contract_batches(dataset: Dataset, contract: PreprocessContract, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(dataset), batch_size):
        yield contract.batch([dataset.image(i) for i in range(start, min(start + batch_size, len(dataset)))])
