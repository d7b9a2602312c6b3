"""Property tests (hypothesis): every loss is zero where the student equals the teacher and non-negative otherwise;
the preprocessing contract equals torchvision's pipeline for any image size, mode, crop and colour order; a
randomly mutated recipe either loads or fails with a ToolkitError naming the file and the key, never a traceback."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, torchvision_input, write_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from distill.losses.dait import dait_stage2_loss, spatial_mse
from distill.losses.kd import js_rows, kd_loss, kl_rows
from distill.losses.lavid import lavid_loss
from distill.losses.nsd import nsd_class_margin, nsd_sample_neighbors
from distill.losses.rkd import rkd_loss
from distill.losses.vl2lite import text_kl, vl2lite_loss
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract
from toolkit.recipe import load_recipe

# ---------------------------------------------------------------- losses

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def batches(draw: st.DrawFn, low: float = -20.0, high: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two distinct (B, C) float32 logit batches, B in 4..8, C in 3..6."""
    b, c = draw(st.integers(4, 8)), draw(st.integers(3, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.floats(0.1, high))
    a = (torch.rand(b, c, generator=g) * 2 - 1) * scale
    d = (torch.rand(b, c, generator=g) * 2 - 1) * scale
    return a.clamp(low, high), d.clamp(low, high)


@SETTINGS
@given(batches())
def test_divergences_are_zero_on_equal_inputs_and_non_negative(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    s, t = pair
    labels = torch.arange(len(s)) % s.shape[1]
    same = {
        "kl": kl_rows(t, t).abs().max(),
        "js": js_rows(t, t).abs().max(),
        "kd": kd_loss(t, t, 4.0),
        "nsd_samples": nsd_sample_neighbors(t, t.clone(), k=2),
        "nsd_classes": nsd_class_margin(t, t.clone(), labels, k=2),
        "rkd": rkd_loss(t, t.clone()),
        "dait_feature": spatial_mse(t[:, :, None, None], t[:, :, None, None].clone()),
        "lavid": lavid_loss(t[labels % len(t)], t, labels % len(t)),
    }
    for name, value in same.items():
        assert float(value) == pytest.approx(0.0, abs=2e-5), name
    different = {
        "kl": kl_rows(t, s), "js": js_rows(t, s), "kd": kd_loss(s, t), "nsd_samples": nsd_sample_neighbors(t, s, k=2),
        "nsd_classes": nsd_class_margin(t, s, labels, 2), "rkd": rkd_loss(s, t),
    }  # fmt: skip
    for name, value in different.items():
        assert float(value.min()) >= -1e-6, name
    # JS is bounded by log 2 and symmetric.
    assert float(js_rows(t, s).max()) <= float(np.log(2)) + 1e-6
    torch.testing.assert_close(js_rows(t, s), js_rows(s, t), atol=1e-5, rtol=1e-4)


@SETTINGS
@given(batches(), st.sampled_from(["vl2lite", "pand"]), st.floats(0.5, 4.0))
def test_vl2lite_alignment_terms_vanish_when_student_matches_teacher(
    pair: tuple[torch.Tensor, torch.Tensor], reduction: str, tau: float
) -> None:
    feat, anchors = pair
    anchors = anchors[: max(2, len(anchors) // 2)]
    assert float(text_kl(feat, feat, anchors, anchors, tau, reduction=reduction)) == pytest.approx(0.0, abs=2e-5)
    labels = torch.zeros(len(feat), dtype=torch.long)
    logits = torch.zeros(len(feat), 3)
    out = vl2lite_loss(feat, logits, labels, feat, anchors, feat, anchors, weight=0.0, tau=tau, reduction=reduction)
    assert float(out.vis) == pytest.approx(0.0, abs=1e-6) and float(out.total) == pytest.approx(0.0, abs=2e-5)
    # weight 1: only cross-entropy remains; uniform logits give log(3) whatever the alignment terms are.
    out = vl2lite_loss(feat, logits, labels, feat * 2 + 1, anchors, feat, anchors + 1, weight=1.0, tau=tau)
    assert float(out.total) == pytest.approx(float(np.log(3)), rel=1e-5)
    assert float(dait_stage2_loss(feat, feat.argmax(1), 0.0, teacher_logits=feat)) == pytest.approx(0.0, abs=2e-5)


# ---------------------------------------------------------------- preprocessing contract

MODES = ["RGB", "L", "RGBA", "P", "CMYK", "LA", "1"]


@st.composite
def contracts(draw: st.DrawFn) -> PreprocessContract:
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    mode = draw(st.sampled_from(["shorter", "squash"]))
    low = max(h, w) if mode == "squash" else min(h, w)
    stat = st.floats(0.05, 1.0)
    return PreprocessContract(
        input_size=(h, w), resize_size=draw(st.integers(low, low + 24)), resize_mode=mode,
        interpolation=draw(st.sampled_from(["nearest", "bilinear", "bicubic"])),
        mean=tuple(draw(st.floats(0, 1)) for _ in range(3)), std=tuple(draw(stat) for _ in range(3)),
        channel_order=draw(st.sampled_from(["RGB", "BGR"])),
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(contracts(), st.integers(1, 90), st.integers(1, 90), st.sampled_from(MODES), st.integers(0, 2**31 - 1))
def test_contract_equals_torchvision_for_any_image(c: PreprocessContract, w: int, h: int, mode: str, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    got = c(image)
    assert got.shape == (3, *c.input_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, torchvision_input(image, c), atol=1e-5)
    if mode == "L":  # a greyscale array goes through the same path as the greyscale image
        np.testing.assert_allclose(c(np.asarray(image)), got, atol=0)


# ---------------------------------------------------------------- recipe mutations

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                                                      max_size=2),
)  # fmt: skip


def _paths(node: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(node, dict):
        return [prefix] if prefix else []
    out = [prefix] if prefix else []
    for key, value in node.items():
        out += _paths(value, (*prefix, str(key)))
    return out


def _base_recipes(tmp: Path) -> list[dict]:
    tiny = yaml.safe_load(write_recipe(tmp / "tiny.yaml", tmp / "data").read_text())
    shipped = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "recipes").glob("*.yaml"))[:4]]
    return [tiny, *shipped]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutated_recipe_loads_or_names_the_key(tmp_path: Path, data: st.DataObject) -> None:
    recipes = _base_recipes(tmp_path)
    raw = copy.deepcopy(data.draw(st.sampled_from(recipes), label="recipe"))
    path = data.draw(st.sampled_from(_paths(raw)), label="path")
    *parents, last = path
    node = raw
    for p in parents:
        node = node[p]
    kind = data.draw(st.sampled_from(["value", "delete", "typo", "unknown"]), label="mutation")
    if kind == "value":
        node[last] = data.draw(VALUES, label="value")
    elif kind == "delete":
        del node[last]
    elif kind == "typo":
        node[last[:-1] + "_" if len(last) > 1 else last + "_"] = node.pop(last)
    else:
        node[last + "_extra"] = 1 if not isinstance(node[last], dict) else {"x": 1}
    file = tmp_path / "mutated.yaml"
    file.write_text(yaml.safe_dump(raw))
    try:
        load_recipe(file)
    except ToolkitError as exc:
        message = str(exc)
        assert str(file) in message, message
        named = [".".join(path[: i + 1]) for i in range(len(path))] + [path[-1], last[:-1] + "_", last + "_extra"]
        assert any(n in message for n in named), (path, kind, message)
