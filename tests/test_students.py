"""Student registry: every registered student builds with any head; shipped weights really classify."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from distill.students import create_student, get_student, list_students
from distill.weights import load_state_dict, save_state_dict
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract


@pytest.mark.parametrize("name", list_students())
def test_every_registered_student_builds_and_runs(name: str) -> None:
    model = create_student(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_registry_query_api() -> None:
    assert {"resnet18", "mobilenetv2_100", "efficientnet_lite0"} <= set(list_students())
    assert list_students("mobile*") == ["mobilenetv2_100", "mobilenetv2_100_tv"]
    assert get_student("resnet34").timm_name == "resnet34"  # any timm model works
    with pytest.raises(ToolkitError, match='Did you mean "resnet18"'):
        get_student("resnet-18")


def imagenet_top1(model: torch.nn.Module, image: np.ndarray, mean: tuple, std: tuple) -> int:
    contract = PreprocessContract(input_size=224, resize_size=256, interpolation="bicubic", mean=mean, std=std)
    with torch.no_grad():
        return int(model(torch.from_numpy(contract(image))[None]).argmax())


def test_efficientnet_lite0_shipped_weights_classify_real_photos() -> None:
    spec = get_student("efficientnet_lite0")
    model = create_student("efficientnet_lite0", num_classes=1000, pretrained=True).eval()
    # ImageNet: 281-285 are domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian); 967 espresso, 968 cup.
    assert imagenet_top1(model, skdata.chelsea(), spec.mean, spec.std) in {281, 282, 283, 284, 285}
    assert imagenet_top1(model, skdata.coffee(), spec.mean, spec.std) in {967, 968}


def test_pretrained_backbone_with_new_head_keeps_features() -> None:
    full = create_student("efficientnet_lite0", num_classes=1000, pretrained=True)
    small = create_student("efficientnet_lite0", num_classes=10, pretrained=True)
    assert torch.equal(full.conv_stem.weight, small.conv_stem.weight)
    assert small.get_classifier().out_features == 10


def test_weights_file_round_trip_and_mismatch(tmp_path: Path) -> None:
    a = create_student("mobilenetv2_100", num_classes=5)
    save_state_dict(tmp_path / "w.safetensors", a.state_dict())
    b = create_student("mobilenetv2_100", num_classes=5, weights=tmp_path / "w.safetensors")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    with pytest.raises(ToolkitError, match="does not fit student 'resnet18'"):
        create_student("resnet18", num_classes=5, weights=tmp_path / "w.safetensors")


def test_weights_loading_refuses_pickled_objects(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": object()}, evil)
    with pytest.raises(ToolkitError, match="cannot be loaded as plain tensors"):
        load_state_dict(evil)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ToolkitError, match="not a readable safetensors"):
        load_state_dict(tmp_path / "bad.safetensors")


def test_a_timm_weights_tag_names_the_papers_torchvision_resnet18() -> None:
    # Issue 15 C: the papers' ResNet-18 starts from torchvision's ImageNet weights: timm's resnet18.tv_in1k,
    # the same architecture as the registered resnet18 (pretrained: true downloads them; no hub here).
    spec = get_student("resnet18.tv_in1k")
    assert spec.timm_name == "resnet18.tv_in1k"
    ours, tv = create_student("resnet18", 7).state_dict(), create_student("resnet18.tv_in1k", 7).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in tv.items()}


def test_torchvision_mobilenetv2_maps_onto_timms_layout_with_identical_outputs() -> None:
    # mobilenetv2_100_tv loads torchvision's ImageNet weights (downloaded): here random torchvision weights with
    # non-trivial BatchNorm statistics go through the same mapping and must give the same logits.
    import torchvision

    from distill.students import map_by_position

    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(num_classes=7).eval()
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    ours = create_student("mobilenetv2_100_tv", 7).eval()
    ours.load_state_dict(map_by_position(tv.state_dict(), ours.state_dict(), "test"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=1e-6)
    with pytest.raises(ToolkitError, match="tensors, the target architecture has"):
        map_by_position(create_student("resnet18", 7).state_dict(), ours.state_dict(), "resnet into mobilenet")
