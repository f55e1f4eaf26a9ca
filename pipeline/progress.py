"""Rich progress display for optimizations: iteration bar, loss terms and it/s on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import Tensor

console = Console(stderr=True)

# Reading loss values forces a device sync; do it only every this many iterations.
LOSS_EVERY = 10


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} it/s" if speed else "-- it/s", style="progress.data.speed")


def format_losses(terms: dict[str, Tensor] | dict[str, float], index: int = 0) -> str:
    def value(v: Tensor | float) -> float:
        return float(v[index]) if isinstance(v, Tensor) else float(v)

    return "  ".join(f"{k} {value(terms[k]):.4g}" for k in ("total", "content", "style", "tv")
                     if k in terms)


@contextmanager
def iteration_bar(description: str, total: int, quiet: bool = False) -> Iterator:
    """Yields a progress callback for engine.optimize."""
    if quiet:
        yield None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[losses]}")]
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task(description, total=total, losses="")

    def update(iteration: int, terms: dict[str, Tensor]) -> None:
        if not bar.live.is_started:  # shown from the first iteration, after inputs are checked
            bar.start()
        fields = {}
        if iteration % LOSS_EVERY == 0 or iteration == total:
            fields["losses"] = format_losses(terms)
        bar.update(task, completed=iteration, **fields)

    try:
        yield update
    finally:
        bar.stop()
