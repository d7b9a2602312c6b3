"""`toolkit deploy triton RUN`: a Triton Inference Server model repository for one exported artifact.

<out>/<model>/config.pbtxt     backend, max_batch_size, input/output names, types and shapes read from the
                               model itself, dynamic batching, instance group, class labels
<out>/<model>/labels.txt       one class name per line (Triton's classification extension)
<out>/<model>/1/model.onnx     (onnxruntime backend) or 1/model.plan (tensorrt backend: a built engine)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from runtime.atomic import write_text
from runtime.errors import ToolkitError

ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
              onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.UINT8: "TYPE_UINT8"}  # fmt: skip
TRT_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8"}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    dims: tuple[int, ...]  # without the batch axis


def onnx_io(path: Path) -> tuple[Tensor, Tensor, bool]:
    """(input, output, batch axis is dynamic) of a single-input, single-output ONNX classifier."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ToolkitError(f"{path}: expected one input and one output, got {len(inputs)} and {len(graph.output)}")

    def tensor(value: onnx.ValueInfoProto) -> tuple[Tensor, bool]:
        t = value.type.tensor_type
        if t.elem_type not in ONNX_TYPES:
            raise ToolkitError(f"{path}: {value.name} has ONNX element type {t.elem_type}, not one Triton maps here")
        dims = t.shape.dim
        dynamic = bool(dims[0].dim_param) or dims[0].dim_value == 0
        rest = tuple(d.dim_value for d in dims[1:])
        if any(d <= 0 for d in rest):
            raise ToolkitError(f"{path}: {value.name} has dynamic non-batch dimensions {rest}; re-export it")
        return Tensor(value.name, ONNX_TYPES[t.elem_type], rest), dynamic

    (inp, dyn_in), (out, dyn_out) = tensor(inputs[0]), tensor(graph.output[0])
    return inp, out, dyn_in and dyn_out


def _dims(t: Tensor) -> str:
    return ", ".join(map(str, t.dims))


def config_pbtxt(
    name: str, backend: str, inp: Tensor, out: Tensor, max_batch: int, gpu: bool, trt_accelerator: bool = False
) -> str:
    preferred = sorted({b for b in (4, 8, 16, 32) if b <= max_batch} | {max_batch})
    lines = [f'name: "{name}"']
    lines += ['backend: "onnxruntime"'] if backend == "onnxruntime" else ['platform: "tensorrt_plan"']
    lines += [
        f"max_batch_size: {max_batch}",
        f'input [\n  {{\n    name: "{inp.name}"\n    data_type: {inp.dtype}\n    dims: [ {_dims(inp)} ]\n  }}\n]',
        f'output [\n  {{\n    name: "{out.name}"\n    data_type: {out.dtype}\n    dims: [ {_dims(out)} ]\n'
        f'    label_filename: "labels.txt"\n  }}\n]',
        f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        "  max_queue_delay_microseconds: 500\n}",
        f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]",
    ]
    if trt_accelerator:
        lines.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
            '      name : "tensorrt"\n      parameters { key: "precision_mode" value: "INT8" }\n'
            '      parameters { key: "trt_int8_use_native_calibration_table" value: "false" }\n    } ]\n  }\n}'
        )
    return "\n".join(lines) + "\n"


def write_repository(
    model_path: Path, class_names: list[str], out: Path, name: str, max_batch: int = 32, gpu: bool = False,
    trt_accelerator: bool = False,
) -> Path:  # fmt: skip
    """Write ``out/name`` for an ONNX model (onnxruntime backend) or a TensorRT engine (+ its .json sidecar)."""
    if max_batch < 1:
        raise ToolkitError(f"--max-batch must be at least 1, got {max_batch}")
    if model_path.suffix == ".onnx":
        backend, inp_out = "onnxruntime", onnx_io(model_path)
        inp, outp, dynamic = inp_out
        if not dynamic and max_batch > 1:
            raise ToolkitError(f"{model_path}: fixed batch size; export with a dynamic batch axis or use --max-batch 1")
        target = "model.onnx"
    elif model_path.suffix in (".engine", ".plan"):
        sidecar = model_path.with_name(model_path.name + ".json")
        if not sidecar.is_file():
            raise ToolkitError(f"{sidecar}: missing; the engine's input/output description comes from it")
        info = json.loads(sidecar.read_text())
        try:
            inp = Tensor(info["input"]["name"], TRT_TYPES[info["input"]["dtype"]], tuple(info["input"]["shape"][1:]))
            outp = Tensor(
                info["output"]["name"], TRT_TYPES[info["output"]["dtype"]], tuple(info["output"]["shape"][1:])
            )
            engine_max = int(info["max_batch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ToolkitError(f"{sidecar}: no input/output/max_batch description ({exc!r})") from exc
        if max_batch > engine_max:
            raise ToolkitError(f"--max-batch {max_batch} exceeds the engine's optimisation profile ({engine_max})")
        backend, target, gpu = "tensorrt", "model.plan", True
    else:
        raise ToolkitError(f"{model_path}: Triton needs an .onnx model or a TensorRT .engine/.plan")
    if trt_accelerator and (backend != "onnxruntime" or not gpu):
        raise ToolkitError("--trt-accelerator applies to the onnxruntime backend on GPU (add --gpu)")
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    shutil.copy2(model_path, folder / "1" / target)
    write_text(folder / "labels.txt", "".join(f"{c}\n" for c in class_names))
    write_text(folder / "config.pbtxt", config_pbtxt(name, backend, inp, outp, max_batch, gpu, trt_accelerator))
    return folder
