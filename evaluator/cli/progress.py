"""Progress of `mera-eval run`, for a person at a terminal and for a log file.

On a terminal: live bars, one per task plus an overall line (done/total, rate, ETA, errors); a task
that has not started shows no clock. Anywhere else (a pipe, `nohup`, `docker compose logs`): plain
lines, one every `interval` seconds and one as each task ends, flushed as they are written.

Both are fed by the runner's progress hook (`update`) and by a ticker (`tick`) that the command
drives; the clock is injectable so tests need not wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evaluator.registry import TASKS
from evaluator.runinfo import duration
from evaluator.runner import TaskProgress

Clock = Callable[[], float]
NAME_WIDTH = max(len(name) for name in TASKS)  # bars start in one column


def n_errors(n: int) -> str:
    return f"{n} error{'s' if n != 1 else ''}"


@dataclass
class Tally:
    """Per-task counts as the runner reports them, and when each task started and ended."""

    clock: Clock = time.monotonic
    tasks: dict[str, TaskProgress] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    first_reply: float | None = None

    def __post_init__(self) -> None:
        self.t0 = self.clock()

    def update(self, task: str, p: TaskProgress) -> bool:
        """Record a task's counts; True when this update finished it."""
        now = self.clock()
        self.tasks[task] = p
        if p.done and self.first_reply is None:
            self.first_reply = now
        if (p.done or p.skipped) and task not in self.started:
            self.started[task] = now
        if p.total is not None and p.done + p.skipped >= p.total and task not in self.ended:
            self.started.setdefault(task, now)
            self.ended[task] = now
            return True
        return False

    # --- the overall figures -------------------------------------------------------------------------
    @property
    def total(self) -> int | None:
        totals = [p.total for p in self.tasks.values()]
        return None if not totals or None in totals else sum(totals)  # type: ignore[arg-type]

    @property
    def finished(self) -> int:
        return sum(p.done + p.skipped for p in self.tasks.values())

    @property
    def sent(self) -> int:
        return sum(p.done for p in self.tasks.values())

    @property
    def errors(self) -> int:
        return sum(p.errors for p in self.tasks.values())

    def rate(self) -> float | None:
        """Replies per second in this invocation, from the first reply on."""
        if self.first_reply is None:
            return None
        elapsed = self.clock() - self.first_reply
        return self.sent / elapsed if elapsed > 1 else None

    def eta(self) -> float | None:
        rate, total = self.rate(), self.total
        if not rate or total is None:
            return None
        return max(0.0, total - self.finished) / rate

    def summary(self) -> str:
        total = self.total
        parts = [f"{self.finished}/{total} samples ({100 * self.finished / total:.0f}%)" if total
                 else f"{self.finished} samples"]
        rate = self.rate()
        parts.append(f"{rate:.1f}/s" if rate else "-/s")
        eta = self.eta()
        if eta is not None and self.finished < (total or 0):
            parts.append(f"ETA {duration(eta)}")
        parts.append(n_errors(self.errors))
        return " · ".join(parts)


class LogProgress:
    """Plain lines for a pipe or a log file."""

    def __init__(self, console: Console, *, interval: float = 15.0, clock: Clock = time.monotonic,
                 wallclock: Callable[[], str] = lambda: time.strftime("%H:%M:%S")) -> None:
        self.console = console
        self.interval = interval
        self.tally = Tally(clock)
        self.clock = clock
        self.wallclock = wallclock
        self.last = clock()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tally.tasks:
            self._line(f"{'stopped' if exc[0] else 'done'}: {self.tally.summary()}")

    def _line(self, text: str) -> None:
        self.console.print(f"[{self.wallclock()}] {text}", markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()

    def update(self, task: str, p: TaskProgress) -> None:
        if self.tally.update(task, p):
            took = self.tally.ended[task] - self.tally.started[task]
            stored = f", {p.skipped} already stored" if p.skipped else ""
            self._line(f"{task} done: {p.done + p.skipped}/{p.total} ({n_errors(p.errors)}{stored}) in {duration(took)}")

    def notice(self, message: str) -> None:
        """A line from the run itself (e.g. what it is waiting for), between the progress lines."""
        self._line(message)

    def tick(self) -> None:
        now = self.clock()
        if now - self.last < self.interval or not self.tally.tasks:
            return
        self.last = now
        waiting = sum(1 for t in self.tally.tasks if t not in self.tally.started)
        running = len(self.tally.started) - len(self.tally.ended)
        self._line(f"{self.tally.summary()} · {len(self.tally.ended)} of {len(self.tally.tasks)} tasks done, "
                   f"{running} running, {waiting} waiting")


class LiveProgress:
    """rich bars for a terminal: an overall line, then one bar per task."""

    interval = 1.0  # how often the overall rate and ETA are recomputed

    def __init__(self, console: Console, *, clock: Clock = time.monotonic) -> None:
        self.tally = Tally(clock)
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                             refresh_per_second=4)
        self.overall = self.bars.add_task("all tasks".ljust(NAME_WIDTH), total=None, info="", start=True)
        self.rows: dict[str, int] = {}

    def __enter__(self) -> LiveProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tick()
        self.bars.__exit__(*exc)

    def update(self, task: str, p: TaskProgress) -> None:
        self.tally.update(task, p)
        if task not in self.rows:
            self.rows[task] = self.bars.add_task(task.ljust(NAME_WIDTH), total=p.total, info="", start=False)
        row = self.rows[task]
        if task in self.tally.started and self.bars.tasks[self.rows[task]].start_time is None:
            self.bars.start_task(row)  # the clock runs from the task's first reply, not from the run's start
        info = " ".join(s for s in (n_errors(p.errors) if p.errors else "",
                                    f"{p.skipped} stored" if p.skipped else "") if s)
        self.bars.update(row, total=p.total, completed=p.done + p.skipped, info=info)
        if task in self.tally.ended:
            self.bars.stop_task(row)
        self.tick()

    def notice(self, message: str) -> None:
        """A line from the run itself (e.g. what it is waiting for), printed above the bars."""
        self.bars.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def tick(self) -> None:
        rate, eta = self.tally.rate(), self.tally.eta()
        info = " · ".join(s for s in (f"{rate:.1f}/s" if rate else "", f"ETA {duration(eta)}" if eta else "",
                                      n_errors(self.tally.errors)) if s)
        self.bars.update(self.overall, total=self.tally.total, completed=self.tally.finished, info=info)


class ConsoleLog(logging.Handler):
    """The evaluator's warnings (a sample that failed, and why) through the progress console: above the
    bars on a terminal, as time-stamped lines in a log."""

    def __init__(self, console: Console, wallclock: Callable[[], str] = lambda: time.strftime("%H:%M:%S")) -> None:
        super().__init__(logging.WARNING)
        self.console = console
        self.wallclock = wallclock

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(f"[{self.wallclock()}] {record.getMessage()}", markup=False, highlight=False,
                           soft_wrap=True)


def make_progress(console: Console, interval: float) -> LiveProgress | LogProgress:
    return LiveProgress(console) if console.is_terminal else LogProgress(console, interval=interval)
