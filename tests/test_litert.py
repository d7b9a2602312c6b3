"""LiteRT (TFLite) flatbuffers through litert-torch: FP32 and full-integer INT8 with the contract in the file's
metadata table, and the torch-free session that reads them."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import torch
from conftest import REPO, TORCH_BLOCKER, tiny_conv_classifier
from torch import nn

from runtime.classifier import open_classifier
from runtime.errors import ToolkitError
from runtime.layer_costs import graph_precision
from runtime.litert import META_PRECISION, LiteRTClassifier, read_metadata
from runtime.preprocess import PreprocessContract

# find_spec, not importorskip: importing litert-torch here would bring jax into the test process.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="litert-torch not installed")
SIZE = 12
CONTRACT = PreprocessContract(input_size=(SIZE, SIZE), resize_size=SIZE, class_names=("a", "b", "c"))


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, bool]:
    from export.litert_export import export_litert

    had_jax = "jax" in sys.modules
    path = tmp_path_factory.mktemp("litert") / "m.tflite"
    return path, export_litert(tiny_conv_classifier(), CONTRACT, path), had_jax


def test_fp32_and_full_integer_int8_carry_the_contract_and_match_the_model(fp32, tmp_path: Path) -> None:
    from export.litert_export import export_litert

    model = tiny_conv_classifier()
    x = np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    path, info, had_jax = fp32
    shutil.copy(path, tmp_path / "m.tflite")
    assert info["io"] == {"input": "float32", "output": "float32"} and info["ops"].get("CONV_2D") == 1
    fp32 = open_classifier(tmp_path / "m.tflite", threads=1)
    assert isinstance(fp32, LiteRTClassifier) and fp32.contract == CONTRACT and fp32.precision == "fp32"
    np.testing.assert_allclose(fp32.run(x), reference, atol=1e-5)  # five images, one invoke each
    info = export_litert(model, CONTRACT, tmp_path / "m.int8.tflite", calibration=[x[:3], x[3:]])
    assert info["io"] == {"input": "int8", "output": "int8"}  # full integer: int8 in and out
    assert had_jax or "jax" not in sys.modules  # converted in a spawned child: no jax threads here, forks stay safe
    int8 = LiteRTClassifier(tmp_path / "m.int8.tflite")
    assert int8.precision == "int8" and int8.io() == {"input": "int8", "output": "int8"}
    assert graph_precision(tmp_path / "m.int8.tflite") == "int8" and graph_precision(tmp_path / "m.tflite") == "fp32"
    out = int8.run(x)  # the session quantizes the float input and dequantizes the logits
    assert out.dtype == np.float32 and not np.array_equal(out, fp32.run(x))
    np.testing.assert_allclose(out, reference, atol=0.1 * np.abs(reference).max())
    meta = read_metadata((tmp_path / "m.int8.tflite").read_bytes(), tmp_path / "m.int8.tflite")
    assert meta[META_PRECISION] == b"int8" and "min_runtime_version" in meta  # the converter's entries stay
    # On a device: the session runs with torch absent.
    np.save(tmp_path / "x.npy", x)
    script = TORCH_BLOCKER + (
        "import numpy as np\n"
        "from runtime.litert import LiteRTClassifier\n"
        f"out = LiteRTClassifier({str(tmp_path / 'm.int8.tflite')!r}).run(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, out)\n"
        "assert 'torch' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), out)


def test_bad_tflite_files_are_named(fp32, tmp_path: Path) -> None:
    from ai_edge_litert import schema_py_generated as schema

    with pytest.raises(ToolkitError, match="LiteRT model not found"):
        LiteRTClassifier(tmp_path / "missing.tflite")
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ToolkitError, match="junk.tflite: not a LiteRT flatbuffer"):
        LiteRTClassifier(tmp_path / "junk.tflite")
    # The same model without our metadata entries (as the converter alone writes it).
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(fp32[0].read_bytes(), 0))
    model.metadata = [m for m in model.metadata if not m.name.decode().startswith("toolkit.")]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    (tmp_path / "bare.tflite").write_bytes(bytes(builder.Output()))
    with pytest.raises(ToolkitError, match="no toolkit.preprocess metadata; export it with `toolkit export"):
        LiteRTClassifier(tmp_path / "bare.tflite")


def test_what_litert_cannot_express_is_named_before_a_file_is_written(tmp_path: Path) -> None:
    from export.litert_export import export_litert

    class Det(nn.Module):  # an op with no TFLite lowering: refused by the converter (child process)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.det(x[:, :, :3, :3])

    class DataDependent(nn.Module):  # control flow on values: refused by torch.export (this process)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) if x.sum() > 0 else -x.mean((2, 3))

    with pytest.raises(ToolkitError, match=r"op aten._linalg_det.default has no LiteRT \(TFLite\) lowering"):
        export_litert(Det(), CONTRACT, tmp_path / "det.tflite")
    with pytest.raises(ToolkitError, match="LiteRT export failed at torch.export: GuardOnDataDependentSymNode"):
        export_litert(DataDependent(), CONTRACT, tmp_path / "dd.tflite")
    assert not list(tmp_path.iterdir())


def test_a_missing_interpreter_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from runtime.litert import litert_unavailable_reason

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ai_edge_litert" else real(n, *a))
    assert "pip install 'edge-distill-toolkit[litert]'" in (litert_unavailable_reason() or "")
