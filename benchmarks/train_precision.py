"""Training-step throughput of a student under each precision / memory-format choice, side by side.

Answers "should train.precision auto pick bf16 here?": every variant runs interleaved in one process
(rounds of A, B, C, ...), so machine noise hits them alike, and the ratios to fp32 are printed.

    python benchmarks/train_precision.py --student resnet18 --size 28 --batch 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from distill.precision import autocast, cpu_has_native_bf16
from distill.students import create_student

VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    args = ap.parse_args()

    device = torch.device("cpu")
    setups = {}
    for precision, cl in VARIANTS:
        torch.manual_seed(0)
        model = create_student(args.student, num_classes=10)
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = model.to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (args.batch,))
        setups[(precision, cl)] = (model, opt, x, y)

    def step(key: tuple[str, bool]) -> None:
        model, opt, x, y = setups[key]
        with autocast(key[0], device):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for key in setups:  # warm-up (oneDNN primitive creation)
        step(key)
        step(key)
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in setups}
    for _ in range(args.rounds):
        for key in setups:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(key)
            times[key].append((time.perf_counter() - t0) / args.steps)

    base = statistics.median(times[("fp32", False)])
    print(
        f"{args.student} {args.size}px batch {args.batch}, {torch.get_num_threads()} threads, "
        f"native bf16 on this CPU: {cpu_has_native_bf16()}"
    )
    print(f"{'precision':<10}{'channels_last':<15}{'img/s':>8}{'speed vs fp32':>15}")
    for (precision, cl), ts in times.items():
        med = statistics.median(ts)
        print(f"{precision:<10}{cl!s:<15}{args.batch / med:>8.0f}{base / med:>14.2f}x")


if __name__ == "__main__":
    main()
