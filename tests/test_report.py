"""Report: ladder comparisons checked by hand, every section from a run directory's files, HTML self-contained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.errors import ToolkitError
from runtime.report import build_report, compare_logits
from runtime.report_render import render
from toolkit.cli import app


def test_compare_logits_by_hand() -> None:
    ref = np.array([[0.0, math.log(3.0)], [2.0, 0.0]])  # p = [.25, .75], [., .]
    cand = np.array([[0.0, 0.0], [2.0, 0.0]])  # q = [.5, .5] (argmax 0), identical second row
    r = compare_logits(ref, cand)
    assert r["agreement"] == 0.5
    kl_first = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert r["kl"] == pytest.approx(kl_first / 2, rel=1e-9)
    with pytest.raises(ToolkitError, match="shapes"):
        compare_logits(ref, cand[:1])


def write_eval(folder: Path, logits: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True)
    np.save(folder / "logits.npy", logits.astype(np.float32))
    top1 = float((logits.argmax(1) == labels).mean())
    (folder / "metrics.json").write_text(json.dumps({"top1": top1, "n": len(labels)}))


def fake_run(root: Path) -> Path:
    """A run directory as train + export + eval + bench leave it, with known logits."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    student = rng.standard_normal((200, 3)) + 3 * np.eye(3)[labels]
    onnx = student + 1e-6
    int8 = student.copy()
    int8[:10] = int8[:10, ::-1]  # flips some predictions
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: fake\nstudent: {name: resnet18}\npreprocess: {input_size: [28, 28]}\n")
    (run / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "train_loss": 1 / e, "val_top1": 0.5 + e / 10, "lr": 0.1}) for e in (1, 2))
    )
    for name in ("model.onnx", "model.int8.onnx"):
        (run / name).write_bytes(b"x" * 100)
    guard = {"verdict": "PASS", "tolerance_points": 0.5, "fp32_top1": 0.9, "int8_top1": 0.89, "drop_points": 1.0}
    manifest = {
        "exports": {
            "onnx": {
                "file": "model.onnx",
                "bytes": 4_000_000,
                "parity": {"n": 8, "max_abs_diff": 1e-6, "top1_agreement": 1.0, "passed": True},
            },  # fmt: skip
            "calibration": {"images": 64, "method": "minmax", "source": "train split"},
            "int8_onnxruntime": {
                "file": "model.int8.onnx",
                "bytes": 1_000_000,
                "format": "QDQ U8S8",
                "guard": {**guard, "kept_in_float": ["/layer4/conv"]},
            },  # fmt: skip
        },
        "evaluations": {"fake-test": {"top1": 0.9}},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    base = run / "eval" / "fake-test"
    write_eval(base, student, labels)
    write_eval(base / "artifacts" / "onnx", onnx, labels)
    write_eval(base / "artifacts" / "int8_onnxruntime", int8, labels)
    env = {"cpu": {"model": "TestCPU", "usable_cores": 2, "flags": ["avx2"]}, "memory_gb": 8, "os": "Linux",
           "packages": {"onnxruntime": "1.0"}}  # fmt: skip
    entry = lambda key, p90: {  # noqa: E731
        "artifact": key, "label": key, "single_stream": {"count": 3, "min_ms": 1.0, "p50_ms": p90 / 2, "p90_ms": p90,
        "p95_ms": p90, "p99_ms": p90, "max_ms": p90, "mean_ms": p90 / 2, "samples_ms": [1.0, p90 / 2, p90]},
        "offline": [{"batch_size": 8, "images_per_s": 100.0}],
    }  # fmt: skip
    (run / "bench").mkdir()
    (run / "bench" / "ort-cpu-1t.json").write_text(
        json.dumps(
            {
                "target": {"name": "ort-cpu-1t"},
                "environment": env,
                "artifacts": [entry("onnx", 4.0), entry("int8_onnxruntime", 2.0)],
            }
        )  # fmt: skip
    )
    return run


def test_report_sections_from_run_files(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    report = build_report(run)
    assert report["dataset"] == "fake-test"
    ladder = {s["stage"]: s for s in report["ladder"]}
    assert not ladder["teacher"]["available"] and "teacher" in ladder["teacher"]["reason"]
    assert ladder["onnx"]["versus"] == "student" and ladder["onnx"]["agreement"] == 1.0
    assert ladder["int8_onnxruntime"]["versus"] == "onnx"
    student = np.load(run / "eval/fake-test/logits.npy")
    flipped = student.copy()
    flipped[:10] = flipped[:10, ::-1]
    expected = float((student.argmax(1) == flipped.argmax(1)).mean())
    assert ladder["int8_onnxruntime"]["agreement"] == pytest.approx(expected) and expected < 1.0
    assert [r["p90_ms"] for r in report["latency"]] == [4.0, 2.0]
    assert report["guards"]["int8_onnxruntime"]["kept_in_float"] == ["/layer4/conv"]
    assert [s["bytes"] for s in report["sizes"]] == [4_000_000, 1_000_000]
    # INT8 agrees with FP32 on 96% of the images (< 97%): FP32 ships, and the verdict says why not INT8
    (v,) = report["verdicts"]
    assert v["target"] == "ort-cpu-1t" and v["ship"]["artifact"] == "onnx"
    assert v["runner_up"]["artifact"] == "int8_onnxruntime"
    assert "agrees with onnx on 96.0% (< 97%)" in v["runner_up"]["why"]
    md = render(report, run)["markdown"].read_text()
    assert "| ort-cpu-1t | onnx | 2.00 | int8_onnxruntime: 1.00 ms, but agrees" in md
    # a teacher evaluated on fewer images is shown but not compared (regression: this used to raise)
    write_eval(run / "eval" / "fake-test" / "teacher", np.eye(3)[[0, 1]], np.array([0, 1]))
    ladder = {s["stage"]: s for s in build_report(run)["ladder"]}
    assert ladder["teacher"]["top1"] == 1.0 and "different image sets" in ladder["student"]["note"]


def test_a_base_to_new_run_reports_base_new_and_harmonic_mean(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    b2n = {"new_classes": ["Sandal", "Bag"], "base_n": 50, "new_n": 40,
           "learned": {"base_top1": 0.8, "new_top1": 0.6, "hm": 0.6857},
           "initial": {"base_top1": 0.7, "new_top1": 0.65, "hm": 0.6741}}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps({"test_top1": 0.8, "base_to_new": b2n}))
    md = render(build_report(run), run)["markdown"].read_text()
    assert "## Base-to-new" in md and "(Sandal, Bag)" in md
    assert "| learned | 80.00 | 60.00 | 68.57 |" in md and "| initial | 70.00 | 65.00 | 67.41 |" in md


def test_a_pruned_runs_ladder_shows_the_student_before_pruning(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    student = np.load(run / "eval/fake-test/logits.npy")
    labels = np.argmax(student, 1)
    unpruned = student.copy()
    unpruned[:20] = unpruned[:20, ::-1]
    write_eval(run / "eval" / "fake-test" / "unpruned", unpruned, labels)
    ladder = build_report(run)["ladder"]
    assert [s["stage"] for s in ladder][:4] == ["teacher", "unpruned", "student", "onnx"]
    rows = {s["stage"]: s for s in ladder}
    assert rows["student"]["versus"] == "unpruned" and rows["student"]["label"].endswith("(pruned)")
    assert rows["student"]["agreement"] == pytest.approx(float((unpruned.argmax(1) == labels).mean()))
    assert rows["unpruned"]["label"] == "PyTorch student FP32 before pruning" and rows["onnx"]["versus"] == "student"


def test_a_teacher_on_a_subset_is_compared_on_those_very_images(tmp_path: Path) -> None:
    """Regression (demo): the teacher saw 2,000 test images, the students 10,000, and the ladder compared none."""
    run = fake_run(tmp_path)
    student = np.load(run / "eval/fake-test/logits.npy")
    indices = np.array([5, 17, 42, 99, 150, 151])
    truth = np.array([0, 1, 2, 0, 1, 2])
    teacher = np.eye(3)[[0, 1, 2, 1, 1, 2]] * 4.0  # right on 5 of 6
    folder = run / "eval" / "fake-test" / "teacher"
    write_eval(folder, teacher, truth)
    np.save(folder / "indices.npy", indices)
    np.save(folder / "labels.npy", truth)
    report = build_report(run)
    ladder = {s["stage"]: s for s in report["ladder"]}
    assert ladder["student"]["versus"] == "teacher" and "note" not in ladder["student"]
    there = student[indices]
    assert ladder["student"]["agreement"] == pytest.approx(float((there.argmax(1) == teacher.argmax(1)).mean()))
    assert ladder["student"]["same_images"] == {
        "n": 6, "of": 200, "top1": pytest.approx(float((there.argmax(1) == truth).mean()))
    }  # fmt: skip
    assert "(on 6 of the images)" in ladder["teacher"]["label"]
    md = render(report, run)["markdown"].read_text()
    assert "on its 6 of 200 images (this stage's top-1 there:" in md


def test_render_writes_markdown_html_json_with_plots(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    md = (run / "report.md").read_text()
    for text in ("Fidelity ladder", "| ONNX Runtime INT8 U8S8 |", "ort-cpu-1t", "/layer4/conv", "TestCPU"):
        assert text in md
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "http" not in page.replace("<!doctype html>", "")
    assert sorted(p.name for p in (run / "report_files").iterdir()) == [
        "accuracy_vs_latency.png",
        "latency_distribution.png",
        "training_curves.png",
    ]
    data = json.loads((run / "report.json").read_text())
    assert data["run"]["student"] == "resnet18" and len(data["ladder"]) == 4


def test_report_of_an_unevaluated_run_says_what_to_run(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    render(build_report(run), run)
    md = (run / "report.md").read_text()
    assert "toolkit eval RUN --artifact all" in md and "toolkit bench" in md and "toolkit export" in md
    with pytest.raises(ToolkitError, match="no evaluation on 'nope'"):
        build_report(run, "nope")
    with pytest.raises(ToolkitError, match="manifest.json: not found"):
        build_report(tmp_path)


def test_eval_records_agreement_with_student_and_teacher(tmp_path: Path) -> None:
    from runtime.datasets import ArrayDataset
    from runtime.preprocess import PreprocessContract
    from toolkit.evaluation import write_eval

    data = ArrayDataset("toy", np.zeros((4, 2, 2), np.uint8), np.array([0, 1, 1, 0]), ["a", "b"])
    contract = PreprocessContract(class_names=("a", "b"))
    student = np.array([[1.0, 0], [0, 1], [0, 1], [0, 1]])  # predicts a b b b
    teacher = np.array([[0.0, 1], [0, 1], [1, 0], [0, 1]])  # predicts b b a b
    artifact = np.array([[1.0, 0], [0, 1], [0, 1], [1, 0]])  # predicts a b b a
    assert "agreement_with_student" not in write_eval(student, data, contract, tmp_path)  # not with itself
    t = write_eval(teacher, data, contract, tmp_path, "teacher")
    assert t["agreement_with_student"] == 0.5 and "agreement_with_teacher" not in t
    a = write_eval(artifact, data, contract, tmp_path, "artifacts/onnx")
    assert (a["agreement_with_student"], a["agreement_with_teacher"]) == (0.75, 0.25)
    saved = json.loads((tmp_path / "eval" / "toy" / "artifacts" / "onnx" / "metrics.json").read_text())
    assert saved["agreement_with_teacher"] == 0.25


def test_report_of_a_distillation_run_with_stages_and_no_validation(tmp_path: Path) -> None:
    """Regression: rows without val_top1 (val_fraction 0) made the training plot fail (x and y lengths differ)."""
    run = fake_run(tmp_path)
    rows = [{"stage": "psc", "epoch": 1, "train_loss": 2.0, "train_top1": 0.3}]
    rows += [{"stage": "student", "epoch": e, "train_loss": 1 / e, "lr": 0.01} for e in (1, 2)]
    rows[-1]["val_top1"] = 0.7
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    md = (run / "report.md").read_text()
    assert "| stage | epoch | train loss | val top-1 | lr |" in md and "| psc | 1 | 2.0000 | - |" in md
    assert (run / "report_files" / "training_curves.png").is_file()


def test_guard_criteria_sensitivity_and_class_checks_reach_the_report(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    base = run / "eval" / "fake-test"
    labels = np.argmax(np.load(base / "logits.npy"), 1)  # the student is right everywhere: INT8's flips are losses
    for folder in (base / "artifacts" / "onnx", base / "artifacts" / "int8_onnxruntime"):
        np.save(folder / "labels.npy", labels)
    manifest = json.loads((run / "manifest.json").read_text())
    entry = manifest["exports"]["int8_onnxruntime"]
    entry["guard"].update(min_agreement_pct=90.0, max_class_drop_points=5.0, max_kl=1.0, agreement=0.99, kl=0.001,
                          worst_class=2, worst_class_drop_points=3.0, worst_significant_class=None,
                          failures=[])  # fmt: skip
    entry["sensitivity"] = {"images": 64, "tensors": [{"tensor": f"act_{i}", "sqnr_db": 10.0 + i,
                                                         "consumers": [f"conv_{i}"]} for i in range(25)]}  # fmt: skip
    entry["sensitivity"]["tensors"][0]["consumers"] = ["/layer4/conv"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    report = build_report(run)
    ladder = {s["stage"]: s for s in report["ladder"]}
    assert ladder["int8_onnxruntime"]["worst_class"] is not None
    assert ladder["int8_onnxruntime"]["worst_significant_class"] is not None  # 10 losses, no gains: significant
    (v,) = report["verdicts"]  # 96% agreement passes the export's 90%; the class drop on the test set does not
    assert v["ship"]["artifact"] == "onnx" and "on the evaluation set: class" in v["runner_up"]["why"]
    assert "agrees" not in v["runner_up"]["why"]
    md = render(report, run)["markdown"].read_text()
    assert "| int8_onnxruntime | PASS | 90.00 | 89.00 | 1.00 (0.5) | 99.00 (90) | 3.00 (class 2; 5) |" in md
    assert "| 1 | `act_0` | 10.0 | /layer4/conv | yes |" in md and "| 20 | `act_19` |" in md and "act_20" not in md
    assert (run / "report_files" / "sensitivity_int8_onnxruntime.png").is_file()
    assert len(json.loads((run / "report.json").read_text())["sensitivity"]["int8_onnxruntime"]["tensors"]) == 25


def test_the_fp16_artifact_is_a_rung_compared_with_onnx_fp32(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    base = run / "eval" / "fake-test"
    onnx_logits = np.load(base / "artifacts" / "onnx" / "logits.npy")
    half = onnx_logits.copy()
    half[0] = half[0, ::-1]  # one answer changes in FP16
    write_eval(base / "artifacts" / "fp16", half, np.argmax(np.load(base / "logits.npy"), 1))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["exports"]["fp16"] = {"file": "model.fp16.onnx", "bytes": 2_000_000}
    (run / "model.fp16.onnx").write_bytes(b"x" * 100)
    (run / "manifest.json").write_text(json.dumps(manifest))
    ladder = [s for s in build_report(run)["ladder"] if s.get("available")]
    stages = [s["stage"] for s in ladder]
    assert stages.index("onnx") + 1 == stages.index("fp16") < stages.index("int8_onnxruntime")
    fp16 = next(s for s in ladder if s["stage"] == "fp16")
    assert fp16["versus"] == "onnx" and fp16["label"] == "ONNX Runtime FP16 (FP32 I/O)"
    assert fp16["agreement"] == pytest.approx(float((onnx_logits.argmax(1) == half.argmax(1)).mean()))
