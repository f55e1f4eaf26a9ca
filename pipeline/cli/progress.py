"""Rich progress display for optimizations: iteration bar, loss terms and it/s on stderr."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

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
from rich.table import Table
from rich.text import Text

from ..bulk import ledger
from ..bulk.events import (
    BatchDone,
    BatchStarted,
    CannotWrite,
    CouldNotStart,
    Event,
    Exited,
    Iteration,
    JobsDone,
    Log,
    Lost,
    Ready,
)

if TYPE_CHECKING:
    from torch import Tensor

# Markup and emoji codes off: file names and error messages are printed as they are (a[1].png
# stays a[1].png, a:bee:.png is not a bee); color goes through `say`.
console = Console(stderr=True, markup=False, emoji=False)


def say(label: str, style: str, message: object = "", target: Console | None = None) -> None:
    """`label` in `style`, then the message as plain text, on one unwrapped line."""
    (target or console).print(Text.assemble((label, style), " " if message else "",
                                            str(message)), highlight=False, soft_wrap=True)

# Reading loss values forces a device sync; do it only every this many iterations.
LOSS_EVERY = 10
# Rows listed one by one (invalid rows before a run, failed jobs as they end): past these a
# terminal scrolls everything else away; `pipeline status` lists every failure.
LISTED = 100


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} it/s" if speed else "-- it/s", style="progress.data.speed")


def summary_table(title: str) -> Table:
    """A two-column summary, names and values; long values (paths) wrap rather than cut."""
    table = Table(title=title, show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    return table


def duration(seconds: float, decimals: int = 1) -> str:
    """'13.4 s' under a minute; '4:12:09' from there, as a run of hours is read."""
    if round(seconds, decimals) < 60:
        return f"{seconds:.{decimals}f} s"
    return str(datetime.timedelta(seconds=round(seconds)))


def format_losses(terms: dict[str, Tensor] | dict[str, float], index: int = 0) -> str:
    def value(v: Tensor | float) -> float:
        return float(v[index]) if getattr(v, "ndim", 0) else float(v)  # a tensor: [N]

    return "  ".join(f"{k} {value(terms[k]):.4g}" for k in ("total", "content", "style", "tv")
                     if k in terms)


@contextmanager
def iteration_bar(description: str, total: int, quiet: bool = False) -> Iterator:
    """Yields a progress callback for engine.optimize."""
    if quiet:
        yield None
        return
    columns = [TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
               MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn(),
               TextColumn("{task.fields[losses]}", markup=False)]
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task(description, total=total, losses="")
    pace = Pace()

    def update(iteration: int, terms: dict[str, Tensor]) -> None:
        if pace.live and not bar.live.is_started:  # from the first iteration, inputs checked
            bar.start()
        fields = {}
        if iteration % LOSS_EVERY == 0 or iteration == total:  # all terms: in the summary
            fields["losses"] = f"loss {float(terms['total'][0]):.4g}"
        bar.update(task, completed=iteration, **fields)
        if pace.due(iteration == total):
            say(description, "bold", f"{iteration}/{total} iterations, loss "
                f"{float(terms['total'][0]):.4g}")

    try:
        yield update
    finally:
        if bar.live.is_started:  # stopping a bar never shown prints an empty line
            bar.stop()


class RateHourColumn(ProgressColumn):
    """Images per hour, for tasks that count images (not iterations)."""

    def render(self, task: Task) -> Text:
        if not task.fields.get("images"):
            return Text("")
        elapsed = task.elapsed or 0
        rate = task.completed / elapsed * 3600 if elapsed > 1 and task.completed else None
        return Text(f"{rate:,.0f} img/h" if rate else "-- img/h", style="progress.data.speed")


# Where no bars are drawn, progress lines come at most this often, in seconds.
LOG_EVERY = 60.0


class Pace:
    """Where no bars are drawn (stderr no interactive terminal: a log file, CI, a scheduler's
    output), progress is said in plain lines instead: at most every LOG_EVERY seconds.
    `shown` False (--quiet): neither."""

    def __init__(self, shown: bool = True) -> None:
        self.shown = shown
        self.live = shown and console.is_interactive
        self.at = time.monotonic()

    def due(self, last: bool = False) -> bool:
        """Whether to say a line now (`last`: the work is done, said once more)."""
        if not self.shown or self.live or not (last or time.monotonic() - self.at >= LOG_EVERY):
            return False
        self.at = time.monotonic()
        return True


def status_line(done: int, failed: int, total: int, seconds: float, videos: bool) -> str:
    """`12/240 done, 2 failed, 350 images/hour, eta 0:41:10`: the jobs bar as one line."""
    ended = done + failed
    line = f"{done}/{total} done" + (f", {failed} failed" if failed else "")
    if ended and seconds > 0:
        eta = datetime.timedelta(seconds=round((total - ended) * seconds / ended))
        line += (f", {ledger.rate(done, seconds, videos)}" if done else "") + f", eta {eta}"
    return line


class RunDisplay:
    """Overall jobs bar plus one line per worker; fed the workers' events. No bars where they
    would not be redrawn: a plain line instead (Pace). `quiet`: neither, nor the lines that
    only inform; failures, warnings and what a stop does are still said."""

    def __init__(self, total: int, devices: list[str], quiet: bool = False):
        self.bar = Progress(TextColumn("{task.description}", style="bold", markup=False),
                            BarColumn(),
                            MofNCompleteColumn(), RateHourColumn(), RateColumn(),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            console=console)
        self.overall = self.bar.add_task("jobs", total=total, images=True)
        self.workers = [self.bar.add_task(f"  w{i} {d}: starting", total=1, start=False)
                        for i, d in enumerate(devices)]
        self.labels = list(devices)
        self.devices = list(devices)  # relabelled with precision once workers report
        self.pace = Pace(not quiet)
        self.failed = 0
        self.videos = False  # the rate's unit: a video is one output

    def __enter__(self) -> RunDisplay:
        if self.pace.live:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pace.live:
            self.bar.stop()

    def handle(self, event: Event) -> None:
        wid = event.worker
        task = self.workers[wid]
        match event:
            case Ready(precision=precision):
                self.devices[wid] = f"{self.labels[wid]} {precision}"
                self.bar.update(task, description=f"  w{wid} {self.devices[wid]}: waiting")
            case BatchStarted():
                self._started(event)
            case Iteration(iteration=iteration):
                self.bar.update(task, completed=iteration)
                self._log()
            case BatchDone(done=done, failures=failures):
                self.bar.update(task, completed=self.bar.tasks[task].total)  # reports may be sparse
                self._ended(done, failures)
            case JobsDone(done=done, failures=failures):
                self._ended(done, failures)
            case CouldNotStart(message=message):
                say(f"worker {wid} could not start:", "red", message, self.bar.console)
            case CannotWrite(message=message):
                say("stopping:", "red", message, self.bar.console)
            case Log(message=message, warning=warning):
                self._say(wid, message, warning)
            case Exited():
                self.bar.update(task, description=f"  w{wid} {self.devices[wid]}: finished")
            case Lost(how=how):
                say(f"worker {wid} died ({how})", "red", "", self.bar.console)
                self.bar.update(task, description=f"  w{wid} {self.devices[wid]}: lost")

    def _ended(self, done: int, failures: list[tuple[int, str]]) -> None:
        self.bar.advance(self.overall, done + len(failures))
        for row, error in failures:
            self.failed += 1
            if self.failed <= LISTED:
                say("failed", "red", f"row {row}: {error}", self.bar.console)
            elif self.failed == LISTED + 1:
                say("failed", "red", f"more than {LISTED} jobs: counted from here on, not "
                    "listed (pipeline status lists them all)", self.bar.console)
        self._log(finished=self.bar.tasks[self.overall].finished and bool(done or failures))

    def _log(self, finished: bool = False) -> None:
        """Without bars: the jobs' line and each busy worker's count, when due (a heartbeat
        while long jobs run), and once all jobs have ended."""
        if not self.pace.due(finished):
            return
        task = self.bar.tasks[self.overall]
        line = status_line(int(task.completed) - self.failed, self.failed, int(task.total or 0),
                           task.elapsed or 0.0, self.videos)
        busy = [f"w{i} {w.completed:.0f}/{w.total:.0f}" for i, w in
                enumerate(self.bar.tasks[t] for t in self.workers) if w.started and not w.finished]
        say("jobs", "bold", "; ".join([line, *busy]), self.bar.console)

    def _started(self, event: BatchStarted) -> None:
        wid, n, total, start = event.worker, event.jobs, event.iterations, event.resumed_at
        self.videos |= event.unit == "frames"
        if start and event.label:
            self._say(wid, f"{event.label}: {start} of {total} {event.unit} kept by an "
                      "earlier run")
        elif start:
            self._say(wid, f"resuming a batch of {n} from its checkpoint at iteration "
                      f"{start}/{total}")
        what = event.label or (f"{n} video{'s' * (n > 1)}, frames" if event.unit == "frames"
                               else f"batch of {n}")
        resumed = f", resumed at {start}" if start else ""
        self.bar.reset(self.workers[wid], total=total, completed=start,
                       description=f"  w{wid} {self.devices[wid]}: {what}{resumed}")

    def _say(self, wid: int, message: str, warning: bool = False) -> None:
        """A worker's line: where the run is quiet, only a warning."""
        if warning or self.pace.shown:
            say(f"w{wid}:", "cyan", message, self.bar.console)

    def worker_restarted(self, wid: int) -> None:
        # Its jobs say where they resume (row N: resuming from its checkpoint ...), or start
        # over where none was saved yet.
        self._say(wid, "a new worker starts in its place; its batch goes to the next worker "
                  "free", warning=True)
        self.bar.update(self.workers[wid], description=f"  w{wid} {self.devices[wid]}: starting")

    def interrupted(self) -> None:
        say("stopping:", "yellow", "each worker saves a checkpoint of its batch... "
            "(Ctrl-C again to quit now)", self.bar.console)

    def aborted(self) -> None:
        say("quitting now:", "yellow", "batches in progress resume from their last checkpoint",
            self.bar.console)
