"""Export: ONNX with parity and metadata, INT8 per target with the accuracy guard, clear failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FAILING_GUARD, LENIENT_GUARD, write_image_folder, write_recipe
from onnx import numpy_helper
from torch import nn
from typer.testing import CliRunner

from export.calibration import calibration_batches, stratified_sample, validate_batches
from export.parity import Parity, compare_logits
from runtime.classifier import OnnxClassifier
from runtime.errors import DataError, ToolkitError
from runtime.preprocess import PreprocessContract
from toolkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    data = write_image_folder(tmp / "data", per_class=20)
    recipe = write_recipe(tmp / "r.yaml", data, epochs=2)
    res = runner.invoke(app, ["train", str(recipe), "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    return tmp / "run"


def exports(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["exports"]


@pytest.mark.slow
def test_onnx_export_parity_metadata_dynamic_batch(run_dir: Path) -> None:
    res = runner.invoke(app, ["export", str(run_dir)])
    assert res.exit_code == 0, res.output
    model = OnnxClassifier(run_dir / "model.onnx")
    assert model.contract == PreprocessContract.from_json((run_dir / "preprocess.json").read_text())
    assert model.contract.class_names == ("blue", "green", "red", "yellow")
    for n in (1, 5):
        assert model.run(np.zeros((n, 3, 16, 16), np.float32)).shape == (n, 4)
    parity = exports(run_dir)["onnx"]["parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-3
    with pytest.raises(ToolkitError, match=r"input must be float32 \(N, 3, 16, 16\)"):
        model.run(np.zeros((1, 3, 8, 8), np.float32))


def zero_points(path: Path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.name: inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}


@pytest.mark.slow
def test_int8_targets_and_tensorrt_structure(run_dir: Path) -> None:
    args = ["export", str(run_dir), "--int8", "--backend", "all", *LENIENT_GUARD, "--calib-seeds", "3", "--fp16",
            "--slim"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    ex = exports(run_dir)
    # --slim: a clean CNN keeps its nodes; --fp16: parity-checked against model.onnx, measured by ORT CPU targets
    assert ex["onnx"]["slim"]["nodes_after"] == ex["onnx"]["slim"]["nodes_before"]
    assert ex["fp16"]["file"] == "model.fp16.onnx" and ex["fp16"]["parity_vs_onnx"]["passed"]
    from runtime.artifacts import artifacts_for

    assert [a.key for a in artifacts_for(run_dir, "onnxruntime", ("fp32", "fp16", "int8"))] == [
        "onnx", "fp16", "int8_onnxruntime"]  # fmt: skip
    assert ex["int8_onnxruntime"]["guard"]["verdict"] == "PASS"
    assert ex["int8_tensorrt"]["guard"]["verdict"] == "PASS"
    for key in ("int8_onnxruntime", "int8_tensorrt"):  # the first calibration sample is the shipped model's
        spread = ex[key]["calibration_spread"]
        assert spread["samples"] == 3 and spread["int8_top1"][0] == ex[key]["guard"]["int8_top1"]
        assert spread["std_top1"] == pytest.approx(np.std(spread["int8_top1"], ddof=1))
    assert "calibration_spread" not in ex["int8_openvino"]
    assert ex["calibration"]["images"] >= 4
    from export.tensorrt_engine import unavailable_reason

    if unavailable_reason():  # no TensorRT/GPU here: the manifest says why no engine was built
        assert ex["int8_tensorrt"]["engine"] == {"built": False, "reason": unavailable_reason()}
        assert ex["fp16"]["engine"] == {"built": False, "reason": unavailable_reason()}
    # ONNX Runtime form: unsigned 8-bit activations.
    ort_zp = zero_points(run_dir / "model.int8.onnx")
    assert ort_zp and all(z.dtype == np.uint8 for z in ort_zp.values())
    # TensorRT form: signed, symmetric (every zero point 0), per-channel weights, float biases.
    trt = onnx.load(str(run_dir / "model.int8.tensorrt.onnx"))
    trt_zp = zero_points(run_dir / "model.int8.tensorrt.onnx")
    assert trt_zp and all(z.dtype == np.int8 and not z.any() for z in trt_zp.values())
    inits = {i.name: numpy_helper.to_array(i) for i in trt.graph.initializer}
    dq = [n for n in trt.graph.node if n.op_type == "DequantizeLinear"]
    assert all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in dq if len(n.input) > 2)
    assert any(inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1 for n in dq)  # per-channel weight scales
    assert not any(n.input[0] in inits and inits[n.input[0]].dtype == np.int32 for n in dq)  # no int32 biases
    convs = [n for n in trt.graph.node if n.op_type == "Conv"]
    producers = {o: n.op_type for n in trt.graph.node for o in n.output}
    assert all(producers.get(c.input[0]) == "DequantizeLinear" for c in convs)  # Q/DQ feeds every Conv
    for name in ("model.int8.onnx", "model.int8.tensorrt.onnx"):
        m = OnnxClassifier(run_dir / name)
        assert m.run(np.zeros((2, 3, 16, 16), np.float32)).shape == (2, 4)  # runs in ONNX Runtime
        meta = m.session.get_modelmeta().custom_metadata_map
        assert meta["toolkit.guard"] == "PASS" and "toolkit.preprocess" in meta


@pytest.mark.slow
def test_keep_float_keeps_the_users_layers_in_float(run_dir: Path) -> None:
    from export.qdq_form import qdq_form

    assert runner.invoke(app, ["export", str(run_dir)]).exit_code == 0  # model.onnx: its node names
    conv = next(n.name for n in onnx.load(str(run_dir / "model.onnx")).graph.node if n.op_type == "Conv")
    res = runner.invoke(app, ["export", str(run_dir), "--int8", *LENIENT_GUARD, "--keep-float", conv])
    assert res.exit_code == 0, res.output
    guard = exports(run_dir)["int8_onnxruntime"]["guard"]
    assert guard["kept_in_float"] == [conv] and guard["attempts"][0]["kept_in_float"] == [conv]
    assert qdq_form(onnx.load(str(run_dir / "model.int8.onnx")))["float_ops"] == [conv]
    # The sensitivity table of the first try: every quantized activation, worst first, with its readers.
    sens = exports(run_dir)["int8_onnxruntime"]["sensitivity"]
    assert sens["images"] >= 4 and len(sens["tensors"]) >= 3
    assert [t["sqnr_db"] for t in sens["tensors"]] == sorted(t["sqnr_db"] for t in sens["tensors"])
    assert not any(conv in t["consumers"] for t in sens["tensors"])  # its input stays float: nothing to measure
    # The same exclusion from the run's own manifest (what its guard kept in float).
    (run_dir / "model.int8.onnx").unlink()
    keep = run_dir.parent / "keep.json"
    keep.write_text((run_dir / "manifest.json").read_text())
    res = runner.invoke(app, ["export", str(run_dir), "--int8", *LENIENT_GUARD, "--keep-float-from", str(keep)])
    assert res.exit_code == 0, res.output
    assert qdq_form(onnx.load(str(run_dir / "model.int8.onnx")))["float_ops"] == [conv]


@pytest.mark.slow
def test_guard_forced_failure_keeps_layers_in_float(run_dir: Path) -> None:
    args = ["export", str(run_dir), "--int8", *FAILING_GUARD, "--max-float-layers", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "accuracy guard FAILED" in str(res.exception)
    guard = exports(run_dir)["int8_onnxruntime"]["guard"]
    assert guard["verdict"] == "FAIL" and len(guard["attempts"]) == 3  # plain, then 1 and 2 worst layers in float
    assert guard["kept_in_float"] and all(a["kept_in_float"] for a in guard["attempts"][1:])
    res = runner.invoke(app, [*args, "--allow-fail"])
    assert res.exit_code == 0, res.output
    meta = OnnxClassifier(run_dir / "model.int8.onnx").session.get_modelmeta().custom_metadata_map
    assert meta["toolkit.guard"] == "FAIL"
    # The graph itself, not only the manifest: the layers reading the kept activations run in float.
    from export.qdq_form import COMPUTE_OPS, qdq_form

    kept = set(exports(run_dir)["int8_onnxruntime"]["guard"]["kept_in_float"])
    proto = onnx.load(str(run_dir / "model.int8.onnx"))
    kept_compute = kept & {n.name for n in proto.graph.node if n.op_type in COMPUTE_OPS}
    form = qdq_form(proto)
    assert kept_compute and kept_compute <= set(form["float_ops"]) and form["quantized_ops"] > 0, (kept, form)


@pytest.mark.slow
def test_parity_failure_stops_export_and_removes_file(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import toolkit.exporting as exporting

    monkeypatch.setattr(exporting, "check_parity", lambda *a, **k: Parity(8, 0.5, 2.0, 0.75, 1e-3, 0.99))
    with pytest.raises(
        ToolkitError, match="parity check failed.*max \\|logit diff\\| 5.00e-01.*top-1 agreement 0.7500"
    ):
        exporting.run_export(run_dir)
    assert not (run_dir / "model.onnx").exists()
    assert not list(run_dir.glob("*.tmp"))


def test_export_of_untrained_run_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("name: x\n")
    res = runner.invoke(app, ["export", str(tmp_path)])
    assert res.exit_code != 0 and "student.safetensors: missing" in str(res.exception)
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yaml"]


def test_corrupt_or_foreign_onnx_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ToolkitError, match="ONNX Runtime cannot load it"):
        OnnxClassifier(bad)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 2, 2])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [x],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 2, 2])],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), str(bad))
    with pytest.raises(ToolkitError, match="no 'toolkit.preprocess' metadata"):
        OnnxClassifier(bad)


def test_parity_numbers() -> None:
    ref = np.array([[2.0, 1.0], [0.0, 3.0]], np.float32)
    assert compare_logits(ref, ref + 1e-5, 1e-3, 0.99).passed
    p = compare_logits(ref, np.array([[1.0, 2.0], [0.0, 3.0]], np.float32), 1e-3, 0.99)
    assert (p.max_abs_diff, p.top1_agreement, p.passed) == (1.0, 0.5, False)


def test_calibration_sample_and_validation(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(3), [50, 30, 4])
    idx = stratified_sample(labels, 30, seed=0)
    assert np.bincount(labels[idx]).tolist() == [10, 10, 4]
    # Regression: 512 from 10 classes used to trim the sorted indices, leaving the last class 8 short.
    even = np.repeat(np.arange(10), 100)
    assert set(np.bincount(even[stratified_sample(even, 512, seed=0)]).tolist()) == {52}
    c = PreprocessContract(input_size=8, resize_size=8)
    with pytest.raises(DataError, match="NaN or inf"):
        validate_batches([np.full((2, 3, 8, 8), np.nan, np.float32)], c)
    with pytest.raises(DataError, match=r"expected float32 \(N, 3, 8, 8\)"):
        validate_batches([np.zeros((2, 3, 4, 4), np.float32)], c)
    from runtime.manifests import load_image_folder

    ds = load_image_folder(write_image_folder(tmp_path / "d", per_class=3))
    with pytest.raises(DataError, match="fewer than 5 image"):
        calibration_batches(ds, c, 12, 0, min_per_class=5)
    batches = calibration_batches(ds, c, 8, 0, batch_size=3)
    assert sum(len(b) for b in batches) == 8 and batches[0].shape[1:] == (3, 8, 8)


@pytest.mark.slow
def test_openvino_ir_and_int8_with_accuracy_control(run_dir: Path) -> None:
    from runtime.classifier import OpenVinoClassifier

    res = runner.invoke(app, ["export", str(run_dir), "--int8", "--backend", "openvino", *LENIENT_GUARD])
    assert res.exit_code == 0, res.output
    ex = exports(run_dir)
    assert ex["openvino"]["parity_vs_onnx"]["passed"] and ex["openvino"]["file"] == "model.openvino/model.xml"
    assert ex["int8_openvino"]["guard"]["verdict"] == "PASS"
    for rel in ("model.openvino/model.xml", "model.int8.openvino/model.xml"):
        m = OpenVinoClassifier(run_dir / rel)
        assert m.contract.class_names == ("blue", "green", "red", "yellow")
        assert m.run(np.zeros((3, 3, 16, 16), np.float32)).shape == (3, 4)
    assert not list(run_dir.glob(".model*"))  # no temp folders left
    res = runner.invoke(
        app, ["export", str(run_dir), "--int8", "--backend", "openvino", *FAILING_GUARD, "--allow-fail"]
    )
    assert res.exit_code == 0, res.output
    guard = exports(run_dir)["int8_openvino"]["guard"]
    assert guard["verdict"] == "FAIL"
    assert [a["method"] for a in guard["attempts"]] == ["nncf.quantize", "nncf.quantize_with_accuracy_control"]


def test_opset_is_an_option_and_the_file_has_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export.onnx_export import export_onnx

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    contract = PreprocessContract(input_size=(8, 8), resize_size=8, class_names=("a", "b", "c", "d"))
    export_onnx(model, contract, tmp_path / "m.onnx", opset=21)
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version == 21
    with pytest.raises(ToolkitError, match="--opset 17: not supported; use 18-23"):  # the exporter would write 18
        export_onnx(model, contract, tmp_path / "m17.onnx", opset=17)
    assert not (tmp_path / "m17.onnx").exists()
    # Past the range check, the file itself is checked: asked for 17, torch's exporter writes 18.
    import export.onnx_export

    monkeypatch.setattr(export.onnx_export, "SUPPORTED_OPSETS", (17, *export.onnx_export.SUPPORTED_OPSETS))
    with pytest.raises(ToolkitError, match="the ONNX exporter wrote opset 18, not the 17 asked for"):
        export_onnx(model, contract, tmp_path / "m17.onnx", opset=17)
    assert not (tmp_path / "m17.onnx").exists()


def test_keep_float_names_are_checked(tmp_path: Path) -> None:
    from onnx import helper

    from export.guard import check_keep_float

    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="/layer1/conv1"),
             helper.make_node("Relu", ["y"], ["z"], name="/layer1/relu")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [], [])
    check_keep_float(graph, ("/layer1/conv1", "/layer1/relu"))
    with pytest.raises(ToolkitError, match="--keep-float '/layer1/conv2': no such node in model.onnx. Did you mean"):
        check_keep_float(graph, ("/layer1/conv2",))
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--keep-float", "/layer1/conv1"])
    assert isinstance(res.exception, ToolkitError) and "--keep-float keeps nodes of the ONNX INT8 forms" in str(
        res.exception
    )


def test_tensorrt_version_dispatch_and_engine_sidecar_checks() -> None:
    """TensorRT 11 removed the INT8/FP16 builder flags: engines are built strongly typed there, weakly typed on 10."""
    from export.tensorrt_engine import typing_mode
    from runtime.classifier import check_engine_sidecar

    assert (typing_mode("10.13.3.9"), typing_mode("11.0.0.1")) == ("weak", "strong")
    from export.tensorrt_engine import builder_flags

    assert builder_flags("weak", "int8") == ("INT8", "FP16") and builder_flags("weak", "fp16") == ("FP16",)
    assert builder_flags("strong", "int8") == builder_flags("strong", "fp16") == ()
    with pytest.raises(ToolkitError, match="precision 'fp8' is not int8 or fp16"):
        builder_flags("weak", "fp8")
    with pytest.raises(ToolkitError, match="TensorRT 8.6.1: engines are built for TensorRT 10 and 11"):
        typing_mode("8.6.1")
    sidecar = {"tensorrt": "10.13.3.9", "gpu": "NVIDIA H100 80GB HBM3"}
    check_engine_sidecar(sidecar, "10.13.0.1", "NVIDIA H100 80GB HBM3", "m.engine")  # same minor: runs
    check_engine_sidecar({}, "11.0.0", "Orin", "m.engine")  # an older sidecar without versions
    with pytest.raises(ToolkitError, match="built with TensorRT 10.13.3.9, this is TensorRT 11.0.0; rebuild it here"):
        check_engine_sidecar(sidecar, "11.0.0", "NVIDIA H100 80GB HBM3", "m.engine")
    with pytest.raises(ToolkitError, match="built for a NVIDIA H100 80GB HBM3, this GPU is a Orin; engines do not"):
        check_engine_sidecar(sidecar, "10.13.3.9", "Orin", "m.engine")


def test_tensorrt_engine_gating_and_naming() -> None:
    from export.tensorrt_engine import build_engine, engine_filename, profile_shapes, unavailable_reason

    assert engine_filename("NVIDIA H100 80GB HBM3") == "model.nvidia-h100-80gb-hbm3.engine"
    assert engine_filename("NVIDIA H100 80GB HBM3", "model.qad") == "model.qad.nvidia-h100-80gb-hbm3.engine"
    c = PreprocessContract(input_size=(28, 32), resize_size=32)
    assert profile_shapes(c, 8, 64) == ((1, 3, 28, 32), (8, 3, 28, 32), (64, 3, 28, 32))
    with pytest.raises(ToolkitError, match="opt"):
        profile_shapes(c, 0, 4)
    reason = unavailable_reason()
    if reason is not None:  # this machine: no TensorRT or no GPU
        with pytest.raises(ToolkitError, match="cannot build a TensorRT engine here"):
            build_engine(Path("m.onnx"), Path("."), c, Path("cache"))


@pytest.mark.slow
def test_export_for_a_target_writes_only_what_it_runs(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "model*"))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.pop("exports", None)
    (run / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["export", str(run), "--target", "openvino-cpu", "--held-out-images", "16",
                              "--calib-size", "16", *LENIENT_GUARD])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert set(exports(run)) == {"onnx", "openvino", "calibration", "int8_openvino"}
    assert not (run / "model.int8.onnx").exists()
    res = runner.invoke(app, ["export", str(run), "--target", "ort-cpu-9t"])
    assert res.exit_code != 0 and "unknown target 'ort-cpu-9t'" in str(res.exception)
    assert 'Did you mean "ort-cpu-1t"' in str(res.exception) or 'Did you mean "ort-cpu-2t"' in str(res.exception)


def test_keep_float_from_reads_a_report_a_manifest_or_a_list(tmp_path: Path) -> None:
    from toolkit.exporting import keep_float_names

    guards = {"int8_onnxruntime": {"kept_in_float": ["conv_1", "conv_2"]},
              "int8_tensorrt": {"kept_in_float": ["conv_2", "gemm"]},
              "int8_openvino": {"kept_in_float": ["node_Conv_9/WithoutBiases"]}}  # fmt: skip
    files = {"report.json": {"guards": guards},
             "manifest.json": {"exports": {k: {"guard": v} for k, v in guards.items()} | {"onnx": {"opset": 18}}},
             "mine.json": {"keep_float": ["conv_1", "conv_2", "gemm"]},
             "list.json": ["conv_1", "conv_2", "gemm", "conv_1"]}  # fmt: skip
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
        assert keep_float_names(tmp_path / name) == ("conv_1", "conv_2", "gemm"), name  # OpenVINO's names: not these
    (tmp_path / "bad.json").write_text('{"keep_float": "conv_1"}')
    (tmp_path / "broken.json").write_text("{")
    for name, message in (("bad.json", "expected a run's report.json"), ("broken.json", "not a readable JSON"),
                          ("missing.json", "no such file")):  # fmt: skip
        with pytest.raises(ToolkitError, match=f"--keep-float-from .*{name}: {message}"):
            keep_float_names(tmp_path / name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"calib_seeds": 0}, "--calib-seeds 0: must be at least 1"),
        ({"calib_seeds": 3}, "--calib-seeds re-quantizes the ONNX INT8 forms: add --int8"),
        ({"calib_seeds": 3, "int8": True, "targets": ("openvino",)}, "--calib-seeds re-quantizes the ONNX INT8"),
    ],
)
def test_calib_seeds_is_refused_where_unused(tmp_path: Path, kwargs: dict, message: str) -> None:
    from toolkit.exporting import run_export

    with pytest.raises(ToolkitError, match=message):
        run_export(tmp_path / "no-run", **kwargs)


def test_toolkit_engine_rebuilds_from_the_exported_onnx_or_says_why_not(tmp_path: Path) -> None:
    from torch import nn

    from export.onnx_export import export_onnx
    from export.tensorrt_engine import unavailable_reason

    run = tmp_path / "run"
    res = runner.invoke(app, ["engine", str(run)])
    assert res.exit_code != 0
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"exports": {"onnx": {"file": "model.onnx"}}}))
    res = runner.invoke(app, ["engine", str(run)])
    assert res.exit_code != 0 and "no file to build a TensorRT engine from" in str(res.exception)
    contract = PreprocessContract(input_size=8, resize_size=8, class_names=("a", "b"))
    export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)).eval(), contract, run / "model.fp16.onnx")
    (run / "manifest.json").write_text(json.dumps({"exports": {"fp16": {"file": "model.fp16.onnx"}}}))
    res = runner.invoke(app, ["engine", str(run)])
    engine = exports(run)["fp16"]["engine"]
    if unavailable_reason():  # here: no TensorRT or no GPU, recorded and said
        assert res.exit_code != 0 and engine == {"built": False, "reason": unavailable_reason()}
        assert unavailable_reason() in str(res.exception)
    else:
        assert res.exit_code == 0 and engine["built"] and engine["precision"] == "fp16"


@pytest.mark.slow
def test_export_with_modelopt_as_the_tensorrt_writer(run_dir: Path, tmp_path: Path) -> None:
    """--tensorrt-quantizer modelopt: the same guard, exclusions and sensitivity table as ONNX Runtime's writer."""
    import shutil

    from export.modelopt_quantize import unavailable_reason
    from export.qdq_form import qdq_form

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "model*"))
    assert runner.invoke(app, ["export", str(run)]).exit_code == 0  # model.onnx: its node names
    conv = next(n.name for n in onnx.load(str(run / "model.onnx")).graph.node if n.op_type == "Conv")
    args = ["export", str(run), "--int8", "--backend", "tensorrt", "--tensorrt-quantizer", "modelopt",
            "--calib-size", "16", "--keep-float", conv, *LENIENT_GUARD]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    entry = exports(run)["int8_tensorrt"]
    assert "ModelOpt" in entry["format"] and entry["guard"]["verdict"] == "PASS" and entry["sensitivity"]["tensors"]
    proto = onnx.load(str(run / "model.int8.tensorrt.onnx"))
    assert conv in qdq_form(proto)["float_ops"] and qdq_form(proto)["quantized_ops"] > 0
    assert {p.key: p.value for p in proto.metadata_props}["toolkit.guard"] == "PASS"


def test_a_changed_model_onnx_drops_what_was_made_from_the_old_one(tmp_path: Path) -> None:
    """Regression: re-exporting a retrained student without --int8 left the old INT8 files and manifest entries,
    and eval/bench measured them as this student's."""
    from rich.console import Console

    from toolkit.exporting import drop_stale_exports

    for name in ("model.int8.onnx", "model.fp16.onnx", "model.int8.openvino.xml", "model.int8.openvino.bin",
                 "model.int8.tensorrt.onnx", "model.int8.h100.engine", "model.pte"):  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    old = {
        "onnx": {"file": "model.onnx", "sha256": "old"},
        "calibration": {"images": 64},
        "int8_onnxruntime": {"file": "model.int8.onnx"},
        "fp16": {"file": "model.fp16.onnx"},
        "int8_openvino": {"file": "model.int8.openvino.xml"},
        "int8_tensorrt": {"file": "model.int8.tensorrt.onnx", "engine": {"file": "model.int8.h100.engine"}},
        "executorch": {"file": "model.pte"},
    }
    quiet = Console(quiet=True)
    same = {"onnx": {"file": "model.onnx", "sha256": "old"}, "fp16": {"file": "model.fp16.onnx"}}
    assert drop_stale_exports(tmp_path, old, same, quiet) == old  # the same graph: earlier artifacts still hold
    assert all((tmp_path / n).exists() for n in ("model.int8.onnx", "model.int8.h100.engine"))
    new = {"onnx": {"file": "model.onnx", "sha256": "new"}, "fp16": {"file": "model.fp16.onnx"}}
    kept = drop_stale_exports(tmp_path, old, new, quiet)
    assert set(kept) == {"onnx", "fp16"}  # rewritten by this export (the caller updates them)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.onnx"]
