"""LaViD on Fashion-MNIST, few-shot: the independent student (cross-entropy) vs LaViD with SmolLM2 concept
signatures vs LaViD with MiniLM class-name embeddings as targets (the paper's ablation), ResNet-18 and
MobileNetV2, several seeds, through `toolkit distill` (recipes/fashion_mnist_fewshot_distill.yaml, method
lavid). The independent-student runs are shared with benchmarks/methods_table.py (same recipe, same
folder), so running both trains each baseline once.

    toolkit lavid signatures recipes/lavid/fashion_mnist_mcq.yaml --mode cloze \\
        --out recipes/lavid/fashion_mnist_smollm2_cloze.safetensors        # shipped; this remakes it
    python benchmarks/lavid_table.py --epochs 20 --seeds 0 1 2
Writes benchmarks/results/lavid_fashion_mnist.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from runtime.atomic import write_text
from toolkit.distilling import run_distill
from toolkit.recipe import load_recipe

console = Console(stderr=True, markup=False)
SIGNATURES = Path("recipes/lavid/fashion_mnist_smollm2_cloze.safetensors")


def variants(signatures: Path, weight: float) -> list[tuple[str, str, str, list[str]]]:
    """(label, run tag, method, overrides); the "ce" tag is the methods table's baseline run."""
    return [
        ("Independent student (CE)", "ce", "ce", []),
        ("LaViD, SmolLM2-135M signatures (cloze)", "lavid_llm", "lavid",
         [f"distill.lavid={{targets: {signatures}, weight: {weight}}}"]),
        ("LaViD, MiniLM class-name embeddings", "lavid_minilm", "lavid",
         [f"distill.lavid={{targets: minilm, weight: {weight}}}"]),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=Path("recipes/fashion_mnist_fewshot_distill.yaml"))
    ap.add_argument("--students", nargs="+", default=["resnet18", "mobilenetv2_100"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--weight", type=float, default=40.0, help="beta (the paper's lambda for R18/MNV2 on CUB)")
    ap.add_argument("--signatures", type=Path, default=SIGNATURES)
    ap.add_argument("--out", type=Path, default=Path("runs/methods_table"))
    ap.add_argument("--table", type=Path, default=Path("benchmarks/results/lavid_fashion_mnist.md"))
    ap.add_argument("--only", nargs="+", choices=["ce", "lavid_llm", "lavid_minilm"],
                    help="train only these variants and write no table (for parallel workers)")  # fmt: skip
    args = ap.parse_args()
    sig_report = json.loads(args.signatures.with_suffix(".json").read_text())
    rows: dict[tuple[str, str], list[dict]] = {}
    for seed in args.seeds:
        for student in args.students:
            for label, tag, method, extra in variants(args.signatures, args.weight):
                if args.only and tag not in args.only:
                    continue
                run_dir = args.out / f"{student}-{tag}-s{seed}"
                if (run_dir / "metrics.json").is_file():
                    metrics = json.loads((run_dir / "metrics.json").read_text())
                else:
                    sets = [f"student.name={student}", f"distill.method={method}", f"seed={seed}",
                            f"train.epochs={args.epochs}", *extra]  # fmt: skip
                    console.print(f"--- {student} {tag} seed {seed}")
                    metrics = run_distill(load_recipe(args.recipe, sets), run_dir, force=True, console=console)
                rows.setdefault((label, student), []).append(metrics)
    if args.only:
        return
    fmt = lambda v: f"{100 * np.mean(v):.2f} ± {100 * np.std(v, ddof=1) if len(v) > 1 else 0.0:.2f}"  # noqa: E731
    lines = [
        "# LaViD on Fashion-MNIST, few-shot (30 images per class)",
        "",
        f"Command: `python benchmarks/lavid_table.py --epochs {args.epochs} --seeds {' '.join(map(str, args.seeds))}`"
        f" (recipe `{args.recipe}`, beta = {args.weight:g}). Top-1 % on the 10,000 official test images (last epoch),"
        f" mean ± std over {len(args.seeds)} seeds; s/run = training time per run on this CPU.",
        "",
        f"Signatures: `{args.signatures}` ({sig_report['provenance']['model']}, {sig_report['provenance']['mode']} "
        f"mode, {sig_report['provenance']['questions']} questions x {sig_report['provenance']['options']} options): "
        f"mean entropy {sig_report['mean_entropy']:.3f} nats, mean max probability "
        f"{sig_report['mean_max_probability']:.3f}, mean pairwise JS between classes "
        f"{sig_report['mean_pairwise_js']:.4f}, questions the same for every class: "
        f"{sig_report['flat_questions'] or 'none'}; computed in {sig_report['seconds']:.0f} s.",
        "",
        "| targets | " + " | ".join(f"{s} top-1 % | {s} s/run" for s in args.students) + " |",
        "|---|" + "---|---|" * len(args.students),
    ]
    for label, *_ in variants(args.signatures, args.weight):
        cells = []
        for student in args.students:
            runs = rows[(label, student)]
            cells += [fmt([m["test_top1"] for m in runs]), f"{np.mean([m['train_time_s'] for m in runs]):.0f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_text(args.table, text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
