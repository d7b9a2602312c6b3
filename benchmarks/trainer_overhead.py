"""What the one training engine costs, measured side by side in one process (this machine is noisy).

1. engine vs a bare PyTorch loop, cross-entropy, same model / data / optimizer: goal >= 0.95x throughput;
2. KD, VL2Lite and PAND (NSD) objectives from cached teacher embeddings vs cross-entropy in the same engine:
   goal >= 0.9x (the teacher never runs; only the small heads and the loss terms are extra);
3. with ``--distill``: wall time of each stage of PAND and DAIT-F vs w/o KD, from `toolkit distill` runs
   on Fashion-MNIST with the packaged ConSE teacher (cache build, PSC, intermediate teacher, student).

Rounds interleave the variants (A, B, C, A, B, C, ...), a few steps each; a ratio is the median over rounds of
the ratio within the round (adjacent measurements: slow drifts of a shared machine cancel).

    python benchmarks/trainer_overhead.py --size 32 --batch 64 --steps 16 --rounds 9 [--distill]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch.utils.data import TensorDataset

from distill.config import TrainConfig
from distill.distributed import DistContext
from distill.engine import train
from distill.methods.registry import get_method
from distill.objectives import BaseLossObjective, CrossEntropy, HintonKD
from distill.students import create_student
from distill.teachers.base import CosineHead
from runtime.environment import cpu_description

CPU = DistContext(0, 1, 0, torch.device("cpu"))


def bare_loop(net: torch.nn.Module, data: TensorDataset, batch: int, steps: int, lr: float) -> float:
    """Seconds for ``steps`` SGD steps of plain PyTorch (DataLoader, CE, zero_grad/backward/step)."""
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    t0 = time.perf_counter()
    for i, (x, y, _) in enumerate(loader):
        if i == steps:
            break
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def engine_run(objective, data: TensorDataset, batch: int, lr: float, folder: Path) -> float:
    """Seconds per training epoch of the engine (one epoch = ``steps`` steps; validation and checkpoint
    excluded: the engine's own ``time_s`` includes the checkpoint, so the epoch is timed from its rows)."""
    cfg = TrainConfig.model_validate({"epochs": 1, "batch_size": batch, "precision": "fp32", "channels_last": False,
                                      "optimizer": {"name": "sgd", "lr": lr, "weight_decay": 0.0}})  # fmt: skip
    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    result = train(objective, data, cfg, folder, 0, CPU, console=quiet)
    row = result.history[-1]
    return row["train_images"] / row["train_images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps per variant per round")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--distill", action="store_true", help="also time PAND / DAIT-F / w/o KD stage by stage")
    ap.add_argument("--per-class", type=int, default=30, help="--distill: Fashion-MNIST images per class")
    ap.add_argument("--epochs", type=int, default=3, help="--distill: epochs of every stage but PSC (5)")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    n, d, c = args.batch * args.steps, 64, 10
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, args.size, args.size, generator=g), torch.randint(0, c, (n,), generator=g),
                         F.normalize(torch.randn(n, d, generator=g), dim=-1))  # fmt: skip
    anchors = F.normalize(torch.randn(c, d, generator=g), dim=-1)

    def student() -> torch.nn.Module:
        torch.manual_seed(0)
        return create_student(args.student, c)

    def objective(name: str):
        m = get_method(name) if name != "ce" else None
        if name == "ce":
            return CrossEntropy(student(), 1)
        terms, params = m.stage("student").losses, m.params
        if name == "kd":
            return HintonKD(student(), 1, terms, params, CosineHead(anchors, 100.0))
        return BaseLossObjective(student(), 1, terms, params, anchors)

    variants = ["bare", "ce", "kd", "vl2lite", "pand"]
    # One model per variant, kept across rounds (training simply continues): every round runs on warm
    # allocator and oneDNN caches, as the epochs of a real run do.
    models = {v: student() if v == "bare" else objective(v) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):  # round 0 warms up oneDNN
            for v in variants:
                if v == "bare":
                    seconds = bare_loop(models[v], data, args.batch, args.steps, 0.01)
                else:
                    seconds = engine_run(models[v], data, args.batch, 0.01, Path(tmp) / f"{v}{r}")
                if r:
                    times[v].append(seconds)
    ips = {v: n / statistics.median(t) for v, t in times.items()}

    def paired(num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(times[num], times[den]))

    out = {
        "cpu": cpu_description(), "machine": platform.machine(), "threads": torch.get_num_threads(),
        "student": args.student, "size": args.size, "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
        "images_per_s_median": {v: round(x, 1) for v, x in ips.items()},
        "engine_ce_vs_bare": round(paired("bare", "ce"), 3),
        **{f"{v}_vs_ce": round(paired("ce", v), 3) for v in ("kd", "vl2lite", "pand")},
    }  # fmt: skip
    print(json.dumps(out, indent=2))
    print(f"engine CE vs bare loop: {out['engine_ce_vs_bare']:.3f}x (goal >= 0.95)")
    for v in ("kd", "vl2lite", "pand"):
        print(f"{v} from cache vs CE: {out[f'{v}_vs_ce']:.3f}x (goal >= 0.9)")
    if args.distill:
        stage_breakdown(args.per_class, args.epochs)


def stage_breakdown(per_class: int, epochs: int) -> None:
    """`toolkit distill` on Fashion-MNIST (ConSE teacher) for w/o KD, PAND and DAIT-F, every stage timed; the
    teacher cache is built once first (timed apart) and reused by all three, as the methods table does."""
    import yaml

    from toolkit.distilling import run_distill
    from toolkit.recipe import load_recipe

    def recipe_for(method: str, tmp: str):
        sets = [f"distill.method={method}", f"train.epochs={epochs}", "distill.params={}", "distill.stages=null",
                f"distill.cache.dir={tmp}/cache", "train.precision=fp32", "data.test=null"]  # fmt: skip
        if method == "pand":
            sets.append("distill.params={coop_epochs: 5}")
        recipe = load_recipe("recipes/fashion_mnist_fewshot_distill.yaml", sets)
        return recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"shots": per_class})})

    quiet = Console(stderr=True, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_distill(recipe_for("ce", tmp), Path(tmp) / "warmup", force=True, console=quiet)
        print(f"teacher cache build (+ one w/o KD run): {time.perf_counter() - t0:.1f}s")
        rows = {}
        for method in ("ce", "pand", "dait_f"):
            t0 = time.perf_counter()
            metrics = run_distill(recipe_for(method, tmp), Path(tmp) / method, force=True, console=quiet)
            total = time.perf_counter() - t0
            stages = {f"{k}_s": v["seconds"] for k, v in metrics["stages"].items()}
            other = total - sum(stages.values())  # cache reuse, data, teacher anchors
            rows[method] = {"total_s": round(total, 1), **stages, "setup_s": round(other, 1)}
        base = rows["ce"]["total_s"]
        for method, row in rows.items():
            summary = yaml.safe_dump(row, default_flow_style=True).strip()
            print(f"{method:7s} {summary}  ({row['total_s'] / base:.2f}x w/o KD)")


if __name__ == "__main__":
    main()
