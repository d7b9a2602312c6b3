"""Teacher-output cache: M replayable crops per training image, each with the teacher's normalised
embedding (fp16) and optionally its top-K logits + log-sum-exp, computed once and reused by every epoch,
method, student and seed (methods-spec section 6).

Layout of a cache directory:
    manifest.json              key (teacher, weights hash, data fingerprint, crop recipe, M, top-K ...), sizes
    shard-00000/*.npy          boxes (n, M, 4) f32, flips (n, M) u8, embeddings (n, M, D) f16
                               [, topk_idx, topk_val, lse]
    shard-00000.json           written last: the shard is complete; sha256 of each of its files
Shards are built independently (resumable after a kill: complete shards are skipped; rank r of W builds
shards r, r+W, ...). A cache whose key differs from what is asked is stale and rebuilt; a shard whose
checksum does not match is reported and never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.crops import AUGMENT_FIELDS, CropRecipe, sample_view, view_input
from distill.teachers.base import Teacher
from runtime.atomic import check_space, write_errors, write_json
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.hashing import sha256_file
from runtime.locks import release, try_flock, wait_flock
from runtime.preprocess import PreprocessContract

FORMAT = 1
Progress = Callable[[int], None]


def weights_sha256(module: torch.nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, values): a teacher's identity beyond its name."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def topk_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices, values, log-sum-exp) of each row: enough to rebuild MS or MR soft labels later."""
    values, indices = logits.topk(k, dim=-1)
    return indices, values, torch.logsumexp(logits, dim=-1)


def ms_labels(indices: np.ndarray, values: np.ndarray, lse: np.ndarray, num_classes: int) -> np.ndarray:
    """Marginal smoothing: the true top-K probabilities, the remaining mass spread evenly over the other classes."""
    top = np.exp(values.astype(np.float64) - lse[..., None])
    k = indices.shape[-1]
    tail = np.clip(1.0 - top.sum(-1), 0.0, None) / max(num_classes - k, 1)
    out = np.repeat(tail[..., None], num_classes, axis=-1)
    np.put_along_axis(out, indices.astype(np.int64), top, axis=-1)
    return out / out.sum(-1, keepdims=True)


def mr_labels(indices: np.ndarray, values: np.ndarray, num_classes: int) -> np.ndarray:
    """Marginal re-normalisation: softmax over the top-K logits only, zero elsewhere."""
    v = values.astype(np.float64)
    p = np.exp(v - v.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.zeros((*indices.shape[:-1], num_classes))
    np.put_along_axis(out, indices.astype(np.int64), p, axis=-1)
    return out


@dataclass(frozen=True)
class CacheSpec:
    """What a cache is for; its JSON is the key."""

    teacher: str
    weights_sha256: str
    dataset: str
    dataset_fingerprint: str
    num_images: int
    crops: int
    recipe: dict[str, Any]
    teacher_input: dict[str, Any]
    seed: int
    topk: int = 0
    anchors_sha256: str | None = None
    image_backend: str = "torch"  # engines agree with PyTorch to ~1e-5, not bit for bit: caches stay apart

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _crops_of(index: int, image_size: tuple[int, int], spec: CacheSpec, recipe: CropRecipe) -> list:
    rng = np.random.default_rng([spec.seed, index])
    return [sample_view(rng, *image_size, recipe) for _ in range(spec.crops)]


class TeacherCache:
    """A built cache, memory-mapped. ``record(i, c)`` -> (box, flip, embedding) of crop c of image i."""

    def __init__(self, root: Path, verify: bool = True):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise ToolkitError(f"{self.root}: no teacher cache here (build it with `toolkit cache build`)")
        self.manifest = json.loads(path.read_text())
        self.spec = CacheSpec(**self.manifest["key"])
        self.shard_size = int(self.manifest["shard_size"])
        self.recipe = CropRecipe.from_dict(self.spec.recipe)
        n_shards = int(self.manifest["num_shards"])
        missing = [i for i in range(n_shards) if not (self.root / f"shard-{i:05d}.json").is_file()]
        if missing:
            raise ToolkitError(
                f"{self.root}: incomplete cache, {len(missing)} of {n_shards} shards missing (first: {missing[0]}); "
                "run the same `toolkit cache build` again to finish it"
            )
        if verify:
            self.verify()
        self._arrays: dict[int, dict[str, np.ndarray]] = {}

    def verify(self) -> None:
        """Check every shard file against the checksum written when it was built."""
        for info in sorted(self.root.glob("shard-*.json")):
            record = json.loads(info.read_text())
            for name, digest in record["files"].items():
                f = self.root / info.stem / name
                if not f.is_file() or sha256_file(f) != digest:
                    raise ToolkitError(
                        f"{f}: corrupted teacher-cache shard (checksum mismatch or missing); delete {info} and "
                        "rebuild it with `toolkit cache build` (complete shards are kept)"
                    )

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._arrays:
            folder = self.root / f"shard-{s:05d}"
            self._arrays[s] = {p.stem: np.load(p, mmap_mode="r") for p in folder.glob("*.npy")}
        return self._arrays[s]

    def record(self, index: int, crop: int) -> tuple[np.ndarray, bool, np.ndarray]:
        s, j = divmod(index, self.shard_size)
        arrays = self._shard(s)
        return arrays["boxes"][j, crop], bool(arrays["flips"][j, crop]), arrays["embeddings"][j, crop]

    def augment(self, index: int, crop: int) -> np.ndarray | None:
        """The packed vl2lite draw of crop ``crop`` of image ``index`` (None for plain crops)."""
        if self.recipe.pipeline != "vl2lite":
            return None
        s, j = divmod(index, self.shard_size)
        return self._shard(s)["augment"][j, crop]

    def view(self, image: Any, index: int, crop: int, contract: PreprocessContract) -> np.ndarray:
        """Crop ``crop`` of image ``index`` (the PIL image) as ``contract``'s input: what the teacher encoded."""
        box, flip, _ = self.record(index, crop)
        return view_input(image, box, flip, self.augment(index, crop), self.recipe, contract)

    def embeddings(self) -> np.ndarray:
        """Every stored embedding, (N, M, D) float32 (PAND's PSC trains on them)."""
        n_shards = int(self.manifest["num_shards"])
        return np.concatenate([self._shard(s)["embeddings"] for s in range(n_shards)]).astype(np.float32)

    def topk(self, index: int, crop: int) -> tuple[np.ndarray, np.ndarray, float]:
        if not self.spec.topk:
            raise ToolkitError(f"{self.root}: built without top-K logits (--topk)")
        s, j = divmod(index, self.shard_size)
        a = self._shard(s)
        return a["topk_idx"][j, crop], a["topk_val"][j, crop], float(a["lse"][j, crop])

    def crop_for_epoch(self, index: int, epoch: int) -> int:
        """Each image walks through its M crops without replacement, in a fresh order every M epochs."""
        m = self.spec.crops
        order = np.random.default_rng([self.spec.seed, index, epoch // m, 1]).permutation(m)
        return int(order[epoch % m])


def teacher_view_contract(teacher: Teacher, size: int | None) -> PreprocessContract:
    """The teacher's preprocessing with its input side set to ``size`` (None: its own). The papers' code feeds
    its teacher the same 224-px view as the student; the teacher's own input (256 for convnext_xxlarge) is
    ours. The resize side keeps the teacher's crop fraction."""
    own = teacher.contract
    if size is None or (size, size) == own.input_size:
        return own
    if size < 1:
        raise ToolkitError(f"distill.cache.teacher_input_size: {size} must be a positive number of pixels")
    resize = max(size, round(size * own.resize_size / own.input_size[0]))
    return replace(own, input_size=(size, size), resize_size=resize)


def cache_spec(
    teacher: Teacher,
    dataset: Dataset,
    crops: int,
    recipe: CropRecipe,
    seed: int,
    topk: int,
    anchors: torch.Tensor | None,
    teacher_input_size: int | None = None,
) -> CacheSpec:
    if crops < 1:
        raise ToolkitError(f"crops per image must be at least 1, got {crops}")
    if topk and anchors is None:
        raise ToolkitError("top-K logits need class anchors (a template or calibrated anchors)")
    anchors_hash = None
    if anchors is not None:
        anchors_hash = hashlib.sha256(anchors.float().contiguous().numpy().tobytes()).hexdigest()
    return CacheSpec(
        teacher=teacher.spec,
        weights_sha256=weights_sha256(teacher),
        dataset=dataset.name,
        dataset_fingerprint=dataset.fingerprint(),
        num_images=len(dataset),
        crops=crops,
        recipe=recipe.to_dict(),
        teacher_input=teacher_view_contract(teacher, teacher_input_size).to_dict(),
        seed=seed,
        topk=topk,
        anchors_sha256=anchors_hash,
        image_backend=teacher.image_backend,
    )


def build_cache(
    root: Path,
    teacher: Teacher,
    dataset: Dataset,
    spec: CacheSpec,
    anchors: torch.Tensor | None = None,
    shard_size: int = 1024,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 64,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Build this rank's missing shards; returns how many it built. A stale cache (other key) is cleared."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    # Builders of this key share the cache lock; clearing a stale cache needs it alone (another job building
    # into the same folder with another key is an error, not a silent mix of two caches).
    cache_lock = root / ".cache.lock"
    fd: int | None = None
    _check_teacher_input(teacher, spec)
    _check_cache_space(root, spec, shard_size, rank, world_size, teacher.embed_dim)
    with write_errors(root):
        root.mkdir(parents=True, exist_ok=True)
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("key") != spec.to_dict() or old.get("shard_size") != shard_size:
            if rank == 0:
                fd = try_flock(cache_lock, exclusive=True)
                if fd is None:
                    raise ToolkitError(
                        f"{root}: stale cache, and another process is building it for another key; wait for it, "
                        "or give this run its own distill.cache.dir"
                    )
                changed = sorted(k for k in spec.to_dict() if old.get("key", {}).get(k) != spec.to_dict()[k])
                log(f"{root}: stale cache (changed: {', '.join(changed) or 'shard size'}); rebuilding")
                for p in root.glob("shard-*"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            else:
                _wait_for_key(manifest_path, spec, shard_size)
    n_shards = max(1, -(-spec.num_images // shard_size))
    manifest = {"format": FORMAT, "key": spec.to_dict(), "shard_size": shard_size, "num_shards": n_shards}
    if rank == 0 or not manifest_path.is_file():
        write_json(manifest_path, manifest)
    if fd is None:
        fd = wait_flock(cache_lock, exclusive=False)
    else:
        fcntl.flock(fd, fcntl.LOCK_SH)
    recipe = CropRecipe.from_dict(spec.recipe)

    def build(s: int) -> int:
        if (root / f"shard-{s:05d}.json").is_file():
            return 0
        start, stop = s * shard_size, min((s + 1) * shard_size, spec.num_images)
        arrays = _compute_shard(teacher, dataset, spec, recipe, range(start, stop), anchors, batch_size, progress)
        _write_shard(root, s, start, stop, arrays)
        return 1

    built, busy = 0, []
    teacher.eval()
    try:
        for s in range(rank, n_shards, world_size):
            if (root / f"shard-{s:05d}.json").is_file():
                continue
            shard_fd = try_flock(root / f".shard-{s:05d}.lock")
            if shard_fd is None:
                busy.append(s)
                continue
            try:
                built += build(s)
            finally:
                release(shard_fd, root / f".shard-{s:05d}.lock")
        for s in busy:  # another process builds it: wait, then use its shard (or build it if that process died)
            lock = root / f".shard-{s:05d}.lock"
            log(f"{root}: shard {s} is being built by another process; waiting for it")
            shard_fd = wait_flock(lock)
            try:
                built += build(s)
            finally:
                release(shard_fd, lock)
    finally:
        release(fd)
    return built


@torch.no_grad()
def _check_teacher_input(teacher: Teacher, spec: CacheSpec) -> None:
    """A teacher fed another input size than its own (``teacher_input_size``) must be able to encode it: one
    blank image is tried before the build, so a ViT with fixed position embeddings fails here, by name."""
    own, asked = teacher.contract.to_dict(), spec.teacher_input
    if own["input_size"] == asked["input_size"]:
        return
    h, w = asked["input_size"]
    try:
        out = teacher.encode_image(torch.zeros(1, 3, h, w))
    except Exception as exc:  # noqa: BLE001 - any failure of the teacher's forward pass is reported the same way
        raise ToolkitError(
            f"distill.cache.teacher_input_size {h}: teacher {teacher.spec} cannot encode {h}x{w} images "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); remove the key to feed it "
            f"its own input size {tuple(own['input_size'])}"
        ) from exc
    if tuple(out.shape) != (1, teacher.embed_dim):
        raise ToolkitError(f"distill.cache.teacher_input_size {h}: teacher {teacher.spec} returned shape "
                           f"{tuple(out.shape)} at {h}x{w}, expected (1, {teacher.embed_dim})")  # fmt: skip


def _check_cache_space(root: Path, spec: CacheSpec, shard_size: int, rank: int, world: int, dim: int) -> None:
    """Before anything is computed: the disk must hold this rank's missing shards (all of them if stale)."""
    n_shards = max(1, -(-spec.num_images // shard_size))
    try:
        old = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        old = {}
    fresh = old.get("key") == spec.to_dict() and old.get("shard_size") == shard_size
    todo = [s for s in range(rank, n_shards, world) if not (fresh and (root / f"shard-{s:05d}.json").is_file())]
    images = sum(min((s + 1) * shard_size, spec.num_images) - s * shard_size for s in todo)
    augment = CropRecipe.from_dict(spec.recipe).pipeline == "vl2lite"
    check_space(root, images * spec.crops * cache_bytes_per_crop(dim, spec.topk, augment),
                f"the teacher cache ({images} images x {spec.crops} crops)")  # fmt: skip


def cache_bytes_per_crop(embed_dim: int, topk: int, augment: bool = False) -> int:
    """What one crop costs on disk: box (4 f32), flip (u8), fp16 embedding, top-K int32 + fp16 + lse f32, and a
    vl2lite draw (16 f32)."""
    return 16 + 1 + 2 * embed_dim + (6 * topk + 4 if topk else 0) + (4 * AUGMENT_FIELDS if augment else 0)


def _write_shard(root: Path, s: int, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
    """The shard's arrays into a temp folder renamed into place, then its checksums (written last: complete)."""
    folder = root / f"shard-{s:05d}"
    tmp = root / f".shard-{s:05d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with write_errors(folder):
            tmp.mkdir(parents=True)
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = {p.name: sha256_file(p) for p in sorted(folder.glob("*.npy"))}
    write_json(root / f"shard-{s:05d}.json", {"start": start, "stop": stop, "files": files})


def _wait_for_key(manifest_path: Path, spec: CacheSpec, shard_size: int, timeout_s: float = 600.0) -> None:
    """Ranks other than 0 wait while rank 0 clears a stale cache and writes the new manifest."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            current = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            current = {}
        if current.get("key") == spec.to_dict() and current.get("shard_size") == shard_size:
            return
        time.sleep(1.0)
    raise ToolkitError(f"{manifest_path}: stale cache and rank 0 did not rewrite it within {timeout_s:.0f}s")


@torch.no_grad()
def _compute_shard(
    teacher: Teacher,
    dataset: Dataset,
    spec: CacheSpec,
    recipe: CropRecipe,
    indices: range,
    anchors: torch.Tensor | None,
    batch_size: int,
    progress: Progress | None,
) -> dict[str, np.ndarray]:
    contract = PreprocessContract.from_dict(spec.teacher_input)
    n, m = len(indices), spec.crops
    boxes = np.zeros((n, m, 4), np.float32)
    flips = np.zeros((n, m), np.uint8)
    augment = np.zeros((n, m, AUGMENT_FIELDS), np.float32) if recipe.pipeline == "vl2lite" else None
    jobs: list[tuple[int, int]] = []
    inputs: list[np.ndarray] = []
    outputs: list[torch.Tensor] = []

    def flush() -> None:
        if inputs:
            outputs.append(teacher.encode_image(torch.from_numpy(np.stack(inputs))).float())
            inputs.clear()

    for j, index in enumerate(indices):
        image = dataset.image(index)
        for c, (box, flip, draw) in enumerate(_crops_of(index, image.size, spec, recipe)):
            boxes[j, c], flips[j, c] = box, flip
            if augment is not None:
                augment[j, c] = draw
            inputs.append(view_input(image, box, flip, draw, recipe, contract))
            jobs.append((j, c))
            if len(inputs) == batch_size:
                flush()
        if progress:
            progress(1)
    flush()
    emb = torch.cat(outputs).reshape(n, m, -1)
    arrays = {"boxes": boxes, "flips": flips, "embeddings": emb.half().numpy()}
    if augment is not None:
        arrays["augment"] = augment
    if spec.topk:
        logits = teacher.zero_shot_logits(emb.reshape(n * m, -1), anchors)
        idx, val, lse = topk_logits(logits, spec.topk)
        arrays.update(
            topk_idx=idx.reshape(n, m, -1).to(torch.int32).numpy(),
            topk_val=val.reshape(n, m, -1).half().numpy(),
            lse=lse.reshape(n, m).numpy().astype(np.float32),
        )
    return arrays


class CachedCropDataset(torch.utils.data.Dataset):
    """Training items replayed from the cache: (student input of the cached crop, label, teacher embedding).

    ``set_epoch`` picks which of each image's M crops this epoch uses; the student sees exactly the pixels
    the teacher saw, at the student's own size and normalisation.
    """

    def __init__(self, dataset: Dataset, cache: TeacherCache, contract: Any, epoch: int = 0):
        if cache.spec.dataset_fingerprint != dataset.fingerprint() or cache.spec.num_images != len(dataset):
            raise ToolkitError(
                f"{cache.root}: cache built for {cache.spec.dataset} ({cache.spec.num_images} images, fingerprint "
                f"{cache.spec.dataset_fingerprint[:12]}), not for {dataset.name} ({len(dataset)} images); rebuild it"
            )
        self.dataset, self.cache, self.contract, self.epoch = dataset, cache, contract, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        crop = self.cache.crop_for_epoch(i, self.epoch)
        _, _, emb = self.cache.record(i, crop)
        x = self.cache.view(self.dataset.image(i), i, crop, self.contract)
        return torch.from_numpy(x), int(self.dataset.labels[i]), torch.from_numpy(np.asarray(emb, np.float32))


class CachedTopKDataset(CachedCropDataset):
    """FDBPL's items: (student input of the cached crop, label, teacher top-K indices, top-K logits, log-sum-exp)."""

    def __init__(self, dataset: Dataset, cache: TeacherCache, contract: Any, epoch: int = 0):
        super().__init__(dataset, cache, contract, epoch)
        if not cache.spec.topk:
            raise ToolkitError(f"{cache.root}: built without top-K logits; rebuild it with --topk K")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        crop = self.cache.crop_for_epoch(i, self.epoch)
        idx, val, lse = self.cache.topk(i, crop)
        x = self.cache.view(self.dataset.image(i), i, crop, self.contract)
        return (torch.from_numpy(x), int(self.dataset.labels[i]), torch.from_numpy(np.asarray(idx, np.int64)),
                torch.from_numpy(np.asarray(val, np.float32)), torch.tensor(lse, dtype=torch.float32))  # fmt: skip
