"""The decode-every-image check before training or evaluation, with a progress bar."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import Progress

from runtime.datasets import Dataset, FileDataset
from runtime.sources import check_images


def check_dataset(dataset: Dataset, policy: str, console: Console, show: bool = True) -> tuple[Dataset, dict[str, Any]]:
    """``runtime.sources.check_images`` with progress; prints how many images were skipped."""
    total = len(dataset) if isinstance(dataset, FileDataset) else 0
    with Progress(console=console, transient=True, disable=not (show and total)) as progress:
        task = progress.add_task(f"checking {total} images of {dataset.name}", total=total)
        clean, report = check_images(dataset, policy, on_item=lambda: progress.advance(task))
    if report["skipped"] and show:
        console.print(
            f"skipped {report['skipped']} unusable image(s) of {report['checked']} in {dataset.name} "
            "(listed in manifest.json)",
            style="yellow",
            markup=False,
        )
    return clean, report
