"""Training throughput side by side in one run: plain cross-entropy (no teacher), distillation with the
teacher online, distillation from the teacher-output cache. Same student, crops, batch and steps.

The distillation loss is VL2Lite's visual term (L1 between the student's normalised pooled feature and
the teacher embedding through a trained condensation MLP) plus cross-entropy: what a cached embedding
must serve. Teachers: the embedded ConSE teacher (shipped weights) and OpenCLIP convnext_xxlarge built
with random weights (its cost does not depend on its weights). The cache is built beforehand for exactly
the images the runs use (build time printed separately). Last line: `cached/plain throughput: <ratio>`
(the worst ratio over the teachers and sizes measured).

    python benchmarks/cache_speedup.py --sizes 224 28 \
        --teachers conse:efficientnet_lite0+minilm openclip:convnext_xxlarge/none
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.crops import CropRecipe, crop_input, sample_crop
from distill.students import create_student
from distill.teacher_cache import CachedCropDataset, TeacherCache, build_cache, cache_spec
from distill.teachers.registry import create_teacher
from runtime.datasets import Dataset
from runtime.preprocess import PreprocessContract
from runtime.sources import parse_data_arg


class Distiller(nn.Module):
    """Student + condensation MLP (teacher dim -> student feature dim), dropped after training."""

    def __init__(self, student: nn.Module, teacher_dim: int):
        super().__init__()
        self.student = student
        d = student.num_features
        self.align = nn.Sequential(nn.Linear(teacher_dim, d), nn.ReLU(), nn.Linear(d, d))

    def loss(self, x: torch.Tensor, y: torch.Tensor, teacher_emb: torch.Tensor | None) -> torch.Tensor:
        feats = self.student.forward_head(self.student.forward_features(x), pre_logits=True)
        ce = F.cross_entropy(self.student.get_classifier()(feats), y)
        if teacher_emb is None:
            return ce
        return ce + F.l1_loss(F.normalize(feats, dim=-1), F.normalize(self.align(teacher_emb), dim=-1))


def fresh_crops(dataset: Dataset, indices: list[int], seed: int) -> list[tuple]:
    """Crops drawn afresh each step, as an uncached pipeline does."""
    out = []
    for i in indices:
        image = dataset.image(i)
        box, flip = sample_crop(np.random.default_rng([seed, i]), *image.size, CropRecipe())
        out.append((image, box, flip))
    return out


class Mode:
    """One training variant with its own model and optimizer; ``step`` trains on one batch of indices."""

    def __init__(self, name: str, model: Distiller, dataset: Dataset, contract: PreprocessContract, teacher=None,
                 cached: CachedCropDataset | None = None):  # fmt: skip
        self.name, self.model, self.dataset, self.contract = name, model.train(), dataset, contract
        self.teacher, self.cached = teacher, cached
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.images, self.seconds = 0, 0.0

    def step(self, idx: list[int], seed: int, timed: bool = True) -> None:
        t0 = time.perf_counter()
        if self.cached is not None:
            items = [self.cached[i] for i in idx]
            x = torch.stack([it[0] for it in items])
            y = torch.tensor([it[1] for it in items])
            emb = torch.stack([it[2] for it in items])
        else:
            crops = fresh_crops(self.dataset, idx, seed)
            x = torch.from_numpy(np.stack([crop_input(im, b, f, self.contract) for im, b, f in crops]))
            y = torch.as_tensor(self.dataset.labels[idx], dtype=torch.long)
            emb = None
            if self.teacher is not None:
                t_in = np.stack([crop_input(im, b, f, self.teacher.contract) for im, b, f in crops])
                with torch.no_grad():
                    emb = self.teacher.encode_image(torch.from_numpy(t_in)).float()
        loss = self.model.loss(x, y, emb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if timed:
            self.seconds += time.perf_counter() - t0
            self.images += len(idx)

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion_mnist:train")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 28])
    ap.add_argument("--teachers", nargs="+",
                    default=["conse:efficientnet_lite0+minilm", "openclip:convnext_xxlarge/none"])  # fmt: skip
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    dataset = parse_data_arg(args.data).open()
    order = np.random.default_rng(0).permutation(len(dataset))[: args.batch * (args.steps + 1)].tolist()
    subset = dataset.subset(order)
    local = list(range(len(subset)))  # the subset's own indices
    worst = None
    print(f"{args.student}, batch {args.batch}, {args.steps} timed steps, torch threads {torch.get_num_threads()}")
    for spec in args.teachers:
        teacher = create_teacher(spec)
        with tempfile.TemporaryDirectory() as tmp:
            key = cache_spec(teacher, subset, 1, CropRecipe(), 0, 0, None)
            t0 = time.perf_counter()
            build_cache(Path(tmp), teacher, subset, key, shard_size=len(subset), batch_size=args.batch)
            build_s = time.perf_counter() - t0
            cache = TeacherCache(Path(tmp))
            print(f"{spec}: cache build {build_s:.1f}s for {len(subset)} images x 1 crop "
                  f"({len(subset) / build_s:.2f} img/s)")  # fmt: skip
            for size in args.sizes:
                contract = PreprocessContract(input_size=size, resize_size=size, mean=(0.5,) * 3, std=(0.5,) * 3)
                modes = []
                for name in ("plain", "online", "cached"):  # each from the same initial weights
                    torch.manual_seed(0)
                    model = Distiller(create_student(args.student, len(dataset.class_names)), teacher.embed_dim)
                    online = teacher if name == "online" else None
                    replay = CachedCropDataset(subset, cache, contract) if name == "cached" else None
                    modes.append(Mode(name, model, subset, contract, online, replay))
                batches = [local[i * args.batch : (i + 1) * args.batch] for i in range(args.steps + 1)]
                for mode in modes:  # untimed warm-up step
                    mode.step(batches[0], seed=0, timed=False)
                for s, idx in enumerate(batches[1:], start=1):  # interleaved: noise hits every mode alike
                    for mode in modes:
                        mode.step(idx, seed=s)
                rates = {m.name: m.rate for m in modes}
                ratio = rates["cached"] / rates["plain"]
                worst = ratio if worst is None else min(worst, ratio)
                print(
                    f"{spec} @ {size}: plain {rates['plain']:.1f} img/s, online {rates['online']:.2f} img/s, "
                    f"cached {rates['cached']:.1f} img/s; online/plain {rates['online'] / rates['plain']:.3f}, "
                    f"cached/online {rates['cached'] / rates['online']:.1f}x, cached/plain {ratio:.3f}"
                )
        del teacher
    print(f"cached/plain throughput: {worst:.3f}")


if __name__ == "__main__":
    main()
