"""Loss terms against values computed by hand (plain Python math), and finite under extreme logits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.losses.dait import dait_stage2_loss, spatial_mse
from distill.losses.kd import js_rows, kd_loss, kl_rows
from distill.losses.nsd import nsd_class_margin, nsd_sample_neighbors
from distill.losses.rkd import rkd_angle, rkd_distance, rkd_loss
from distill.losses.vl2lite import dynamic_weight, text_kl, vl2lite_loss


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def js(p: list[float], q: list[float]) -> float:
    m = [(a + b) / 2 for a, b in zip(p, q)]
    return 0.5 * kl(q, m) + 0.5 * kl(p, m)


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def norm(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_kd_by_hand() -> None:
    s, t = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]
    expected = 4 * kl(softmax([x / 2 for x in t]), softmax([x / 2 for x in s]))
    assert kd_loss(torch.tensor([s]), torch.tensor([t]), 2.0).item() == pytest.approx(expected, rel=1e-5)
    assert kl_rows(torch.tensor([t]), torch.tensor([t])).item() == pytest.approx(0, abs=1e-7)


def test_js_by_hand_and_symmetric() -> None:
    a, b = [0.0, 1.0, 3.0], [2.0, -1.0, 0.5]
    expected = js(softmax(a), softmax(b))
    assert js_rows(torch.tensor([a]), torch.tensor([b])).item() == pytest.approx(expected, rel=1e-5)
    assert js_rows(torch.tensor([b]), torch.tensor([a])).item() == pytest.approx(expected, rel=1e-5)


def pairwise(points: list[list[float]]) -> list[list[float]]:
    return [[math.dist(p, q) for q in points] for p in points]


def test_rkd_distance_by_hand_and_scale_invariant() -> None:
    student, teacher = [[0, 0], [1, 0], [0, 2]], [[0, 0], [1, 0], [0, 1]]
    ds, dt = pairwise(student), pairwise(teacher)
    mean_s = sum(ds[i][j] for i in range(3) for j in range(3) if i != j) / 6
    mean_t = sum(dt[i][j] for i in range(3) for j in range(3) if i != j) / 6
    expected = sum(huber(ds[i][j] / mean_s - dt[i][j] / mean_t) for i in range(3) for j in range(3)) / 9
    got = rkd_distance(torch.tensor(student, dtype=torch.float), torch.tensor(teacher, dtype=torch.float))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    scaled = torch.tensor(teacher, dtype=torch.float) * 7
    assert rkd_distance(scaled, torch.tensor(teacher, dtype=torch.float)).item() == pytest.approx(0, abs=1e-7)


def test_rkd_angle_by_hand_and_similarity_invariant() -> None:
    student, teacher = [[0, 0], [1, 0], [0, 2]], [[0, 0], [2, 0], [1, 1]]

    def cosines(pts: list[list[float]]) -> list[float]:
        out = []
        for j in range(3):
            for i in range(3):
                for k in range(3):
                    a = [pts[i][d] - pts[j][d] for d in range(2)]
                    b = [pts[k][d] - pts[j][d] for d in range(2)]
                    a = norm(a) if any(a) else [0.0, 0.0]
                    b = norm(b) if any(b) else [0.0, 0.0]
                    out.append(a[0] * b[0] + a[1] * b[1])
        return out

    expected = sum(huber(x - y) for x, y in zip(cosines(student), cosines(teacher))) / 27
    s, t = torch.tensor(student, dtype=torch.float), torch.tensor(teacher, dtype=torch.float)
    assert rkd_angle(s, t).item() == pytest.approx(expected, rel=1e-5)
    rotation = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    assert rkd_angle(3 * t @ rotation + 1, t).item() == pytest.approx(0, abs=1e-6)
    assert rkd_loss(s, t).item() == pytest.approx(25 * rkd_distance(s, t).item() + 50 * expected, rel=1e-5)


def test_rkd_gradients_stay_bounded_with_duplicate_samples() -> None:
    """Regression: two identical embeddings gave angle gradients of ~1e11."""
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]], requires_grad=True)
    rkd_loss(student, torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [3.0, 0.5]])).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().max() < 1e3


def test_dynamic_weight_schedule() -> None:
    assert dynamic_weight(0, 10) == 0.0
    assert dynamic_weight(9, 10) == pytest.approx(9 / 80)
    assert dynamic_weight(0, 10, offset=0.01) == pytest.approx(0.01)
    assert dynamic_weight(5, 10, slope=1.0) == 1.0 and dynamic_weight(3, 10, slope=-1.0) == 0.0


def test_vl2lite_base_loss_by_hand() -> None:
    u, logits, labels = [[1.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [0.5, 0.5]], [0, 1]
    v, t = [[1.0, 1.0], [1.0, -1.0]], [[1.0, 0.0], [0.0, 1.0]]
    v_proj, t_proj = [[0.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [-1.0, 1.0]]
    s, tau, w = 1 / 0.07, 2.0, 0.1
    cls = sum(-math.log(softmax(logits[i])[labels[i]]) for i in range(2)) / 2
    vis = sum(abs(a - b) for i in range(2) for a, b in zip(norm(u[i]), norm(v_proj[i]))) / 4
    kls = []
    for i in range(2):
        z_s = [s * sum(a * b for a, b in zip(norm(u[i]), norm(tp))) / tau for tp in t_proj]
        z_t = [s * sum(a * b for a, b in zip(norm(v[i]), norm(tc))) / tau for tc in t]
        kls.append(kl(softmax(z_t), softmax(z_s)))
    txt_vl2lite, txt_pand = tau**2 / (2 * 2) * sum(kls), tau**2 / 2 * sum(kls)
    args = (
        [torch.tensor(x) for x in (u, logits)]
        + [torch.tensor(labels)]
        + [torch.tensor(x) for x in (v, t, v_proj, t_proj)]
    )
    for reduction, txt in (("vl2lite", txt_vl2lite), ("pand", txt_pand)):
        r = vl2lite_loss(*args, weight=w, reduction=reduction)
        assert r.cls.item() == pytest.approx(cls, rel=1e-5) and r.vis.item() == pytest.approx(vis, rel=1e-5)
        assert r.txt.item() == pytest.approx(txt, rel=1e-4)
        assert r.total.item() == pytest.approx(w * cls + (1 - w) * (vis + txt) / 2, rel=1e-4)
    with pytest.raises(ValueError, match="reduction"):
        text_kl(*args[:1], *args[3:5], args[6], reduction="sum")


def test_nsd_sample_neighbors_by_hand() -> None:
    z_t = [[2.0, 0.0], [1.9, 0.2], [0.0, 3.0], [0.1, 2.0]]
    z_s = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 1.0]]
    # k = 1: nearest other row by cosine of teacher rows: 0<->1, 2<->3
    nearest = {0: 1, 1: 0, 2: 3, 3: 2}
    expected = 0.0
    for i, j in nearest.items():
        r_t = [a - b for a, b in zip(z_t[i], z_t[j])]
        r_s = [a - b for a, b in zip(z_s[i], z_s[j])]
        expected += js(softmax(r_t), softmax(r_s)) / 4
    got = nsd_sample_neighbors(torch.tensor(z_t), torch.tensor(z_s), k=1)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="larger than K"):
        nsd_sample_neighbors(torch.zeros(3, 2), torch.zeros(3, 2), k=3)


def test_nsd_groups_pick_neighbours_within_each_devices_share() -> None:
    # PAND's code: neighbours within each GPU's 32 of the 128. Rows 0,1 | 2,3 as two "devices": row 0's nearest
    # in the whole batch is row 2 ([1.9, 0.2]), but within its group it can only be row 1.
    z_t = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.9, 0.2], [0.1, 2.0]])
    z_s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 1.0]])
    expected = 0.0
    for i, j in {0: 1, 1: 0, 2: 3, 3: 2}.items():
        expected += js(softmax((z_t[i] - z_t[j]).tolist()), softmax((z_s[i] - z_s[j]).tolist())) / 4
    grouped = nsd_sample_neighbors(z_t, z_s, k=1, group=2)
    assert grouped.item() == pytest.approx(expected, rel=1e-5)
    halves = (nsd_sample_neighbors(z_t[:2], z_s[:2], k=1) + nsd_sample_neighbors(z_t[2:], z_s[2:], k=1)) / 2
    assert grouped.item() == pytest.approx(halves.item(), rel=1e-6)
    assert nsd_sample_neighbors(z_t, z_s, k=1).item() != pytest.approx(expected, rel=1e-3)  # the whole batch differs
    with pytest.raises(ValueError, match="the last has 1"):
        nsd_sample_neighbors(z_t, z_s, k=1, group=3)


def test_nsd_class_margin_by_hand() -> None:
    z_t, z_s = [[5.0, 3.0, 2.0, 1.0]], [[0.0, 1.0, 4.0, 2.0]]
    # label 0: the teacher's top-2 non-GT classes are 1 and 2
    expected = js(softmax([3.0, 2.0]), softmax([1.0, 4.0]))
    got = nsd_class_margin(torch.tensor(z_t), torch.tensor(z_s), torch.tensor([0]), k=2)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    scaled = nsd_class_margin(torch.tensor(z_t), torch.tensor(z_s), torch.tensor([0]), k=2, scale=2.0, tau=4.0)
    assert scaled.item() == pytest.approx(js(softmax([1.5, 1.0]), softmax([0.5, 2.0])), rel=1e-5)


def test_dait_stage2() -> None:
    s, t = torch.full((1, 1, 4, 4), 2.0), torch.zeros(1, 1, 2, 2)
    assert spatial_mse(s, t).item() == pytest.approx(4.0)  # student map pooled to 2x2
    with pytest.raises(ValueError, match="channels"):
        spatial_mse(torch.zeros(1, 2, 2, 2), t)
    logits, teacher, labels = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    ce = -math.log(softmax([1.0, 2.0])[1])
    kd = 4 * kl(softmax([1.0, 0.0]), softmax([0.5, 1.0]))
    got = dait_stage2_loss(logits, labels, 0.25, teacher_logits=teacher)
    assert got.item() == pytest.approx(0.25 * ce + 0.75 * kd, rel=1e-5)
    feat = dait_stage2_loss(logits, labels, 0.25, adapted_student_map=s, teacher_map=t)
    assert feat.item() == pytest.approx(0.25 * ce + 0.75 * 4.0, rel=1e-5)


extreme = st.lists(st.floats(-1e4, 1e4), min_size=12, max_size=12)


@settings(max_examples=60, deadline=None)
@given(extreme, extreme)
def test_terms_stay_finite_under_extreme_logits(a: list[float], b: list[float]) -> None:
    za, zb = torch.tensor(a).reshape(4, 3).requires_grad_(), torch.tensor(b).reshape(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    values = [
        kd_loss(za, zb, 2.0),
        js_rows(za, zb).mean(),
        nsd_sample_neighbors(za, zb, k=2),
        nsd_class_margin(za, zb, labels, k=2),
        rkd_loss(za, zb),
        vl2lite_loss(za, za, labels, zb, za[:3], zb, za[:3], weight=0.1).total,
        dait_stage2_loss(za, labels, 0.5, teacher_logits=zb),
    ]
    assert all(torch.isfinite(v).all() for v in values)
    sum(values).backward()
    assert torch.isfinite(za.grad).all()
