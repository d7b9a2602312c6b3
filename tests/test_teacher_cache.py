"""Teacher-output cache: exact replay, MS/MR labels, stale rebuild, corruption, resume, sharding, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP_SPEC, write_image_folder, write_tiny_clip_config
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from distill.crops import CropRecipe, crop_input, sample_crop
from distill.teacher_cache import (
    CachedCropDataset,
    TeacherCache,
    build_cache,
    cache_spec,
    mr_labels,
    ms_labels,
    topk_logits,
)
from distill.teachers.registry import create_teacher
from runtime.errors import ToolkitError
from runtime.manifests import load_image_folder
from runtime.preprocess import PreprocessContract
from toolkit.cli import app


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cache")
    config = write_tiny_clip_config(tmp)
    torch.manual_seed(0)
    teacher = create_teacher(TINY_CLIP_SPEC, config=config)
    data = write_image_folder(tmp / "data", per_class=3, size=20)
    return teacher, load_image_folder(data), config, data


def build(root: Path, teacher, dataset, crops: int = 3, topk: int = 0, recipe: CropRecipe | None = None,
          **kw) -> int:  # fmt: skip
    anchors = teacher.class_anchors(list(dataset.class_names), "a photo of a {}.").detach() if topk else None
    spec = cache_spec(teacher, dataset, crops, recipe or CropRecipe(), 0, topk, anchors)
    return build_cache(root, teacher, dataset, spec, anchors, shard_size=5, batch_size=7, **kw)


def test_replayed_crop_reproduces_stored_embedding(setup, tmp_path: Path) -> None:
    teacher, dataset, _, _ = setup
    assert build(tmp_path / "c", teacher, dataset, topk=2) == math.ceil(len(dataset) / 5)
    cache = TeacherCache(tmp_path / "c")
    for i, c in [(0, 0), (len(dataset) - 1, 2), (6, 1)]:
        box, flip, stored = cache.record(i, c)
        x = crop_input(dataset.image(i), box, flip, teacher.contract)
        with torch.no_grad():
            fresh = teacher.encode_image(torch.from_numpy(x)[None])[0]
        cos = torch.nn.functional.cosine_similarity(fresh, torch.from_numpy(stored.astype(np.float32)), dim=0)
        assert cos >= 0.999
        idx, val, lse = cache.topk(i, c)
        assert idx.shape == (2,) and val[0] >= val[1] and lse >= val[0]


def test_ms_mr_labels_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    idx, val, lse = (t.numpy() for t in topk_logits(logits, 2))
    p = torch.softmax(logits, -1).numpy()[0]
    ms = ms_labels(idx, val, lse, 4)[0]
    np.testing.assert_allclose(ms, [p[0], p[1], (p[2] + p[3]) / 2, (p[2] + p[3]) / 2], rtol=1e-6)
    mr = mr_labels(idx, val, 4)[0]
    np.testing.assert_allclose(mr, [math.e / (math.e + 1), 1 / (math.e + 1), 0, 0], rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-80, 80), min_size=6, max_size=6), st.integers(1, 5))
def test_ms_mr_sum_to_one_with_nonnegative_tail(values: list[float], k: int) -> None:
    idx, val, lse = (t.numpy() for t in topk_logits(torch.tensor([values], dtype=torch.float64), k))
    for labels in (ms_labels(idx, val, lse, 6), mr_labels(idx, val, 6)):
        assert np.isclose(labels.sum(), 1.0) and (labels >= 0).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.integers(0, 2**32 - 1))
def test_sampled_crops_lie_inside_the_image(w: int, h: int, seed: int) -> None:
    box, flip = sample_crop(np.random.default_rng(seed), w, h, CropRecipe())
    assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h and isinstance(flip, bool)


def test_stale_key_rebuilds_and_corruption_is_detected(setup, tmp_path: Path) -> None:
    teacher, dataset, _, _ = setup
    root = tmp_path / "c"
    build(root, teacher, dataset, crops=2)
    assert TeacherCache(root).spec.crops == 2
    logs: list[str] = []
    build(root, teacher, dataset, crops=3, log=logs.append)
    assert "stale cache (changed: crops)" in logs[0]
    cache = TeacherCache(root)
    assert cache.spec.crops == 3 and cache.record(0, 2)[2].shape == (32,)
    emb = root / "shard-00001" / "embeddings.npy"
    raw = bytearray(emb.read_bytes())
    raw[-3] ^= 0xFF
    emb.write_bytes(bytes(raw))
    with pytest.raises(ToolkitError, match=r"shard-00001/embeddings.npy: corrupted"):
        TeacherCache(root)


def test_interrupted_build_resumes_to_the_same_cache(setup, tmp_path: Path) -> None:
    teacher, dataset, _, _ = setup
    seen = []

    def stop_in_second_shard(n: int) -> None:
        seen.append(n)
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "a", teacher, dataset, progress=stop_in_second_shard)
    assert (tmp_path / "a" / "shard-00000.json").is_file() and not (tmp_path / "a" / "shard-00001.json").exists()
    with pytest.raises(ToolkitError, match="incomplete cache"):
        TeacherCache(tmp_path / "a")
    assert build(tmp_path / "a", teacher, dataset) == math.ceil(len(dataset) / 5) - 1
    build(tmp_path / "b", teacher, dataset, crops=2)  # a stale cache: rank 1 waits for rank 0 to rewrite it
    build(tmp_path / "b", teacher, dataset, rank=0, world_size=2)
    build(tmp_path / "b", teacher, dataset, rank=1, world_size=2)  # two ranks share the shards
    build(tmp_path / "c", teacher, dataset)
    for other in ("a", "b"):
        for s in sorted((tmp_path / "c").glob("shard-*.json")):
            assert json.loads(s.read_text()) == json.loads((tmp_path / other / s.name).read_text())


def test_vl2lite_draws_are_stored_and_replayed_for_teacher_and_student(setup, tmp_path: Path) -> None:
    """The papers' augmentation through the cache: every parameter of every crop is stored, the teacher's
    embedding is reproduced by replaying it, and the student sees the same augmented image (FKD's idea)."""
    from distill import vl2lite_augment
    from distill.crops import unpack_augment
    from distill.teacher_cache import cache_bytes_per_crop

    teacher, dataset, _, _ = setup
    recipe = CropRecipe(pipeline="vl2lite", resize=40, size=32, hflip=0.5)
    build(tmp_path / "c", teacher, dataset, crops=3, recipe=recipe)
    cache = TeacherCache(tmp_path / "c")
    assert cache.spec.recipe["pipeline"] == "vl2lite" and "pipeline" not in CropRecipe().to_dict()
    draws = [unpack_augment(cache.augment(i, c)) for i in range(len(dataset)) for c in range(3)]
    assert len({d.angle for d in draws}) == len(draws) and {d.flip for d in draws} == {False, True}
    for i, c in [(0, 0), (len(dataset) - 1, 2), (6, 1)]:
        params = unpack_augment(cache.augment(i, c))
        view = vl2lite_augment.apply(dataset.image(i).convert("RGB"), params, 40, 32)  # the teacher's 32 px
        x = teacher.contract.normalize(np.asarray(view))
        with torch.no_grad():
            fresh = teacher.encode_image(torch.from_numpy(x)[None])[0]
        stored = torch.from_numpy(cache.record(i, c)[2].astype(np.float32))
        assert torch.nn.functional.cosine_similarity(fresh, stored, dim=0) >= 0.999
        # The student (another size and normalisation) gets the same view, resized to its input.
        student = PreprocessContract(input_size=16, resize_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
        items = CachedCropDataset(dataset, cache, student)
        items.set_epoch(next(e for e in range(3) if cache.crop_for_epoch(i, e) == c))
        expected = student.normalize(np.asarray(view.resize((16, 16), resample=Image.Resampling.BILINEAR)))
        np.testing.assert_allclose(items[i][0].numpy(), expected, atol=1e-6)
    assert cache_bytes_per_crop(32, 0, augment=True) - cache_bytes_per_crop(32, 0) == 64


def test_epochs_walk_through_crops_and_dataset_replays(setup, tmp_path: Path) -> None:
    teacher, dataset, _, _ = setup
    build(tmp_path / "c", teacher, dataset, crops=4)
    cache = TeacherCache(tmp_path / "c")
    assert sorted(cache.crop_for_epoch(3, e) for e in range(4)) == [0, 1, 2, 3]
    student = PreprocessContract(input_size=16, resize_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    items = CachedCropDataset(dataset, cache, student, epoch=1)
    x, y, emb = items[2]
    assert x.shape == (3, 16, 16) and y == int(dataset.labels[2]) and emb.shape == (32,)
    with pytest.raises(ToolkitError, match="cache built for"):
        CachedCropDataset(dataset.subset([0, 1]), cache, student)


def test_cache_commands(setup, tmp_path: Path) -> None:
    _, dataset, config, data = setup
    args = ["cache", "build", "--out", str(tmp_path / "c"), "--data", str(data), "--crops", "2", "--teacher",
            TINY_CLIP_SPEC, "--openclip-config", str(config), "--shard-size", "4"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"{math.ceil(len(dataset) / 4)} shard(s) built" in res.output
    provenance = json.loads((tmp_path / "c" / "provenance.json").read_text())
    assert provenance["key"]["crops"] == 2 and provenance["environment"]["packages"]["torch"]
    res = CliRunner().invoke(app, args)  # complete: nothing to do
    assert res.exit_code == 0 and "0 shard(s) built" in res.output
    res = CliRunner().invoke(app, ["cache", "verify", str(tmp_path / "c")])
    assert res.exit_code == 0 and "OK" in res.output


def test_other_ranks_wait_for_rank_zero_on_a_stale_cache(setup, tmp_path: Path) -> None:
    from distill.teacher_cache import _wait_for_key

    teacher, dataset, _, _ = setup
    build(tmp_path / "c", teacher, dataset, crops=2)
    fresh = cache_spec(teacher, dataset, 3, CropRecipe(), 0, 0, None)
    with pytest.raises(ToolkitError, match="rank 0 did not rewrite it"):
        _wait_for_key(tmp_path / "c" / "manifest.json", fresh, 5, timeout_s=0.2)
    _wait_for_key(tmp_path / "c" / "manifest.json", TeacherCache(tmp_path / "c").spec, 5, timeout_s=0.2)


def test_teacher_input_size_feeds_the_teacher_the_view_at_that_side(setup, tmp_path: Path) -> None:
    """distill.cache.teacher_input_size: the papers' code feeds the teacher the 224-px view, not its own input
    size. The teacher encodes each replayed view at the asked side, the key records it, a teacher that cannot
    encode that side is refused by name before anything is written."""
    import timm

    from distill.teacher_cache import teacher_view_contract
    from distill.teachers.classifier import ClassifierTeacher

    _, dataset, _, _ = setup
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=4)
    own = PreprocessContract(input_size=32, resize_size=36, class_names=dataset.class_names)
    cnn = ClassifierTeacher(net, "timm:resnet10t", own, list(dataset.class_names), 4)
    asked = teacher_view_contract(cnn, 24)
    assert asked.input_size == (24, 24) and asked.resize_size == 27 and teacher_view_contract(cnn, None) is own
    recipe = CropRecipe(pipeline="vl2lite", resize=40, size=24)
    spec = cache_spec(cnn, dataset, 2, recipe, 0, 0, None, teacher_input_size=24)
    assert spec != cache_spec(cnn, dataset, 2, recipe, 0, 0, None)  # another key: never mixed with its own size
    build_cache(tmp_path / "c", cnn, dataset, spec, shard_size=5)
    cache = TeacherCache(tmp_path / "c")
    from distill.crops import view_input

    for i, c in [(0, 0), (len(dataset) - 1, 1)]:
        box, flip, stored = cache.record(i, c)
        x = view_input(dataset.image(i), box, flip, cache.augment(i, c), recipe, asked)
        assert x.shape == (3, 24, 24)  # the 24-px view as it is, no resize to the teacher's 32
        with torch.no_grad():
            fresh = cnn.encode_image(torch.from_numpy(x)[None])[0]
        np.testing.assert_allclose(stored.astype(np.float32), fresh.numpy(), rtol=2e-3, atol=2e-3)
    # Through a recipe: distill.cache.teacher_input_size reaches the cache `toolkit distill` opens.
    from rich.console import Console

    from distill.config import CacheConfig, DistillConfig
    from distill.distributed import DistContext
    from toolkit.distilling import open_cache

    cfg = DistillConfig(method="kd", cache=CacheConfig(crops=2, teacher_input_size=24, dir=str(tmp_path / "r")))
    opened = open_cache(cnn, dataset, cfg, tmp_path / "run", Console(quiet=True),
                        DistContext(0, 1, 0, torch.device("cpu")))  # fmt: skip
    assert opened.spec.teacher_input["input_size"] in ([24, 24], (24, 24))
    # The tiny OpenCLIP ViT has position embeddings for 32 px only.
    vit = setup[0]
    bad = cache_spec(vit, dataset, 2, CropRecipe(), 0, 0, None, teacher_input_size=16)
    with pytest.raises(ToolkitError, match="teacher_input_size 16: teacher .* cannot encode 16x16"):
        build_cache(tmp_path / "v", vit, dataset, bad, shard_size=5)
    assert not (tmp_path / "v").exists()


def test_cache_build_command_takes_the_vl2lite_pipeline(setup, tmp_path: Path) -> None:
    _, _, config, data = setup
    base = ["cache", "build", "--out", str(tmp_path / "c"), "--data", str(data), "--crops", "1", "--teacher",
            TINY_CLIP_SPEC, "--openclip-config", str(config)]  # fmt: skip
    res = CliRunner().invoke(app, [*base, "--pipeline", "vl2lite", "--resize", "40", "--size", "32"])
    assert res.exit_code == 0, res.output
    cache = TeacherCache(tmp_path / "c")
    assert cache.spec.recipe["pipeline"] == "vl2lite" and cache.augment(0, 0).shape == (16,)
    res = CliRunner().invoke(app, ["cache", "verify", str(tmp_path / "c")])
    assert res.exit_code == 0 and "(vl2lite), teacher" in res.output and "at 32x32 px" in res.output
    for extra, message in [(["--pipeline", "vl2lite", "--scale", "0.1", "1"], "--scale is not used"),
                           (["--resize", "300"], "--resize and --size are used by --pipeline vl2lite only"),
                           (["--pipeline", "v2lite"], "pipeline 'v2lite' is not one of")]:  # fmt: skip
        res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "bad"), *extra])
        assert res.exit_code != 0 and message in f"{res.exception}{res.output}", res.output
        assert not (tmp_path / "bad").exists()
