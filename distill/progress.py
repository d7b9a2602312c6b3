"""Progress of long work: rich bars on a terminal, plain timed lines otherwise (CI logs, nohup, `> log`).

Without a terminal a rich bar prints nothing until it ends, so a 20-minute epoch or cache build looked
hung. ``Ticker`` prints one line at least every ``every_s`` seconds there: step/total, loss, img/s, ETA.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Ticker:
    """Context manager over ``total`` units of work; ``advance(n, images=..., loss=...)`` after each unit."""

    def __init__(self, console: Console, label: str, total: int, every_s: float = 30.0, enabled: bool = True,
                 start: int = 0) -> None:  # fmt: skip
        self.console, self.label, self.total, self.every_s, self.enabled = console, label, total, every_s, enabled
        self.done, self.start_done, self.images = start, start, 0
        self.loss: float | None = None
        self.rich = enabled and console.is_terminal
        self._progress: Progress | None = None
        self._t0 = self._last = time.monotonic()

    def __enter__(self) -> Ticker:
        if self.rich:
            self._progress = Progress(
                TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), console=self.console, transient=True,
            )  # fmt: skip
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total, completed=self.done, info="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, exc, tb)

    def info(self) -> str:
        elapsed = time.monotonic() - self._t0
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.images and elapsed > 0:
            parts.append(f"{self.images / elapsed:.0f} img/s")
        return ", ".join(parts)

    def line(self) -> str:
        elapsed = time.monotonic() - self._t0
        ran = self.done - self.start_done
        eta = elapsed / ran * (self.total - self.done) if ran else float("nan")
        info = self.info()
        eta_text = _clock(eta) if ran else "?"
        return f"{self.label}: {self.done}/{self.total}" + (f", {info}" if info else "") + f", ETA {eta_text}"

    def advance(self, n: int = 1, images: int = 0, loss: float | None = None) -> None:
        self.done += n
        self.images += images
        if loss is not None:
            self.loss = loss
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, info=self.info())
            return
        now = time.monotonic()
        if now - self._last >= self.every_s and self.done < self.total:
            self._last = now
            self.console.print(self.line())
