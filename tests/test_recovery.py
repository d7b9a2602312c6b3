"""Recovery from cached logits (distill/recovery.py): the KD objective by hand, the flip views serving the
reference model's logits of the very view shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_image_folder
from PIL import Image
from torch import nn

from distill.loss_terms import LossTerm, const
from distill.losses.kd import kd_loss
from distill.recovery import CachedLogitsKD, FlipViews, teacher_views
from distill.students import create_student

SIZE = (32, 32)


def test_cached_logit_kd_by_hand() -> None:
    torch.manual_seed(0)
    net = create_student("resnet18", 3)
    terms = (LossTerm("cls", const(0.25), ""), LossTerm("kd", const(0.75), ""))
    objective = CachedLogitsKD(net, 1, terms, {"temperature": 2.0}).eval()
    x, y, t = torch.randn(4, 3, *SIZE), torch.tensor([0, 1, 2, 0]), torch.randn(4, 3)
    with torch.no_grad():
        out = objective(x, y, t, 0)
        logits = net(x)
    ce = F.cross_entropy(logits, y)
    p, log_q = F.softmax(t / 2, -1), F.log_softmax(logits / 2, -1)
    kd = 4 * (p * (p.log() - log_q)).sum(-1).mean()
    assert float(out.terms["kd"]) == pytest.approx(float(kd), rel=1e-5)
    assert float(out.total) == pytest.approx(float(0.25 * ce + 0.75 * kd_loss(logits, t, 2.0)), rel=1e-5)


def test_flip_views_serve_the_teacher_logits_of_the_very_view(tmp_path: Path) -> None:
    from runtime.manifests import load_image_folder

    dataset = load_image_folder(write_image_folder(tmp_path / "d", per_class=4, size=20))
    transform = lambda im: torch.from_numpy(np.asarray(im.resize((16, 16)), np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    logits = teacher_views(teacher, dataset, transform, batch_size=5)
    views = FlipViews(dataset, transform, logits, seed=3)
    flips = set()
    for epoch in (0, 1):
        views.set_epoch(epoch)
        for i in range(len(dataset)):
            x, y, t = views[i]
            assert torch.equal(views[i][0], x) and y == int(dataset.labels[i])  # same (seed, epoch, item): same view
            with torch.no_grad():
                torch.testing.assert_close(teacher(x[None])[0], t, atol=1e-5, rtol=1e-4)
            plain = transform(dataset.image(i))
            flips.add(not torch.equal(x, plain))
    assert flips == {True, False}
    assert isinstance(dataset.image(0), Image.Image)
