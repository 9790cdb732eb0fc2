"""Progress of long runs on stderr: a live bar in a terminal, rate-limited lines in a log.

The jobs (scan, certify, attacks, audit, compare) report through the *ambient* reporter, so a job
nested in another (an attack inside an audit, a scan inside a compare) shows up inside its parent
without any callback threaded through::

    with progress.task("attacks", total=len(names), unit="attacks") as t:
        for k, name in enumerate(names):
            t.update(k, detail=name)
            ...

Without a reporter (the Python API, ``-q``, Dask workers) every call is a cheap no-op. The CLI
installs one with ``reporting(title, quiet)``:

* stderr is a terminal: a transient rich bar (the task path, the innermost task's bar and count,
  elapsed time and an estimate of the remaining time) redrawn in place;
* otherwise (a file, a pipe, a CI log): one line ``fimaudit: <path> | elapsed 1m05s, remaining
  ~2m30s (estimate)`` at most every ``interval`` seconds (10 s; ``FIMAUDIT_PROGRESS_INTERVAL``
  sets it), the first one once ``interval`` seconds have passed, so short runs print nothing.

A task made with ``estimate=True`` (certify's samples, compare's models) also prints, once, the
estimated total time after its first unit is done. Progress goes to stderr only: stdout (tables,
``--json -``) is the same with and without it. The clock is injectable (``clock=``), so tests
drive the rate limiter and the estimates with a fake clock and never depend on wall time.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

Clock = Callable[[], float]
DEFAULT_INTERVAL = 10.0  # seconds between two progress lines when stderr is not a terminal
ENV_INTERVAL = "FIMAUDIT_PROGRESS_INTERVAL"
TTY_REFRESH = 0.1  # seconds between two redraws of the terminal bar (rich also redraws the clock by itself)

_current: contextvars.ContextVar["Reporter | None"] = contextvars.ContextVar("fimaudit_progress", default=None)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short, for progress lines."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass
class Task:
    """One level of the progress path: ``label done/total unit (detail)``."""

    label: str
    total: int | None = None
    unit: str = ""
    estimate: bool = False  # print the estimated total after the first unit
    done: int = 0
    detail: str = ""
    started: float = 0.0
    estimated: bool = field(default=False, repr=False)

    def text(self, label: bool = True) -> str:
        count = "" if self.total is None else f" {min(self.done, self.total)}/{self.total}"
        unit = f" {self.unit}" if self.unit and self.total is not None else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.label if label else ''}{count}{unit}{detail}".strip()


class Reporter:
    """A stack of nested tasks, the overall fraction done and the remaining-time estimate; subclasses draw."""

    def __init__(self, title: str, clock: Clock = time.monotonic) -> None:
        self.title = title
        self.clock = clock
        self.start = clock()
        self.stack: list[Task] = []

    # -- the model
    def fraction(self) -> float | None:
        """The share of the whole run done: nested tasks refine their parent's current unit; None if unknown."""
        f: float | None = None
        for t in reversed(self.stack):
            if not t.total:
                f = None
                continue
            f = min(t.done + (f or 0.0), t.total) / t.total
        return f

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float | None:
        f = self.fraction()
        if f is None or f <= 0:
            return None
        return self.elapsed() * (1.0 - f) / f

    def parts(self) -> list[str]:
        """The title, then each task (the first one's label left out when it repeats the title: ``scan > 3/20``)."""
        texts = [t.text(label=k > 0 or t.label != self.title) for k, t in enumerate(self.stack)]
        return [self.title] + [t for t in texts if t]

    def path(self) -> str:
        return " > ".join(self.parts())

    def timing(self) -> str:
        rem = self.remaining()
        left = "remaining: estimating" if rem is None else f"remaining ~{duration(rem)} (estimate)"
        return f"elapsed {duration(self.elapsed())}, {left}"

    # -- what the jobs call
    def push(self, task: Task) -> None:
        task.started = self.clock()
        self.stack.append(task)
        self.changed(force=True)

    def pop(self, task: Task) -> None:
        if task in self.stack:
            del self.stack[self.stack.index(task):]
        self.changed(force=True)

    def update(self, task: Task, done: int | None = None, total: int | None = None, detail: str | None = None) -> None:
        if task in self.stack and self.stack[-1] is not task:
            # a parent moves on only once its children are done: tasks left above it were cut short by an exception
            del self.stack[self.stack.index(task) + 1:]
        if total is not None:
            task.total = int(total)
        if done is not None:
            task.done = int(done)
        if detail is not None:
            task.detail = detail
        if task.estimate and not task.estimated and task.done >= 1 and task.total:
            task.estimated = True
            took = self.clock() - task.started
            per = took / task.done
            what = task.unit or "units"
            first = f"the first {task.done}" if task.done > 1 else "the first"
            named = f"{task.label}: " if task.label and task.label != self.title else ""
            more = duration(per * (task.total - task.done))
            self.note(f"{named}{first} of {task.total} {what} took {duration(took)}; estimated total "
                      f"~{duration(per * task.total)} for {task.total} {what} (~{more} more)")
        self.changed()

    def note(self, text: str) -> None:
        """A line of its own (not rate-limited): the estimated total of a long task."""
        raise NotImplementedError

    def changed(self, force: bool = False) -> None:
        """The path or the counts changed: redraw (terminal; ``force``: now) or maybe print a line (log)."""

    def close(self) -> None:
        pass


class LineReporter(Reporter):
    """Not a terminal: one line per ``interval`` seconds at most, none before ``interval`` seconds have passed."""

    def __init__(self, title: str, stream: IO[str] | None = None, clock: Clock = time.monotonic,
                 interval: float = DEFAULT_INTERVAL) -> None:
        super().__init__(title, clock)
        self.stream = stream
        self.interval = float(interval)
        self.last = self.start  # the first line comes once `interval` seconds have passed

    def _write(self, line: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def note(self, text: str) -> None:
        self._write(f"fimaudit: {self.title}: {text}")

    def changed(self, force: bool = False) -> None:  # the rate limit holds even for a new task
        now = self.clock()
        if now - self.last < self.interval or not self.stack:
            return
        self.last = now
        self._write(f"fimaudit: {self.path()} | {self.timing()}")


class TerminalReporter(Reporter):
    """A terminal: one transient rich bar, redrawn in place (at most every ``TTY_REFRESH`` seconds)."""

    def __init__(self, title: str, console: Any = None, clock: Clock = time.monotonic) -> None:
        super().__init__(title, clock)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console if console is not None else Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(bar_width=10), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[left]}"), console=self.console,
                            transient=True)
        self.bar.start()
        self.row = self.bar.add_task(title, total=None, left="")
        self.drawn = -1e18

    def note(self, text: str) -> None:
        self.bar.console.print(f"fimaudit: {self.title}: {text}", soft_wrap=True, highlight=False, markup=False)

    def changed(self, force: bool = False) -> None:
        now = self.clock()
        if now - self.drawn < TTY_REFRESH and not force:
            return
        self.drawn = now
        inner = self.stack[-1] if self.stack else None
        rem = self.remaining()
        total = inner.total if inner else None
        if total is None:  # rich's update() keeps the old total on None: a task without one shows 0/?
            for row in self.bar.tasks:
                if row.id == self.row:
                    row.total = None
        self.bar.update(self.row, description=self.short_path(), completed=inner.done if inner else 0, total=total,
                        left="" if rem is None else f"~{duration(rem)} left")

    def short_path(self) -> str:
        """The task path, its outer levels dropped (``...``) until it leaves room for the bar on one line."""
        room = max(20, self.console.width - 42)  # bar 10, count, clock and estimate take about 42 columns
        parts = self.parts()
        text = " > ".join(parts)
        while len(text) > room and len(parts) > 1:
            parts = parts[1:]
            text = "... > " + " > ".join(parts)
        return text if len(text) <= room else text[: room - 3] + "..."

    def close(self) -> None:
        self.bar.stop()


class TaskHandle:
    """What ``task()`` yields: ``update(done, total=None, detail=None)``, ``advance()``, ``callback()``."""

    def __init__(self, reporter: Reporter | None, task: Task) -> None:
        self.reporter = reporter
        self.task = task

    def update(self, done: int | None = None, total: int | None = None, detail: str | None = None) -> None:
        if self.reporter is not None:
            self.reporter.update(self.task, done, total, detail)

    def end(self) -> None:
        if self.reporter is not None:
            self.reporter.pop(self.task)

    def advance(self, n: int = 1, detail: str | None = None) -> None:
        self.update(self.task.done + n, None, detail)

    def callback(self, chained: Callable[..., None] | None = None,
                 detail: Callable[..., str] | None = None) -> Callable[..., None] | None:
        """A job's ``progress(done, total, *rest)`` callback that updates this task (its detail ``detail(*rest)``)
        and then calls ``chained``."""
        if self.reporter is None:
            return chained

        def call(done: int, total: int, *rest: Any) -> None:
            self.update(done, total, None if detail is None else detail(*rest))
            if chained is not None:
                chained(done, total, *rest)

        return call


def begin(label: str, total: int | None = None, unit: str = "", estimate: bool = False) -> TaskHandle:
    """``task()`` without a ``with`` block: call ``.end()`` when done. If an exception skips ``.end()``, the task
    goes when its parent next moves on."""
    reporter = _current.get()
    t = Task(label, None if total is None else int(total), unit, estimate)
    if reporter is not None:
        reporter.push(t)
    return TaskHandle(reporter, t)


@contextlib.contextmanager
def task(label: str, total: int | None = None, unit: str = "", estimate: bool = False) -> Iterator[TaskHandle]:
    """A nested task of the ambient reporter (a no-op handle when there is none)."""
    reporter = _current.get()
    t = Task(label, None if total is None else int(total), unit, estimate)
    if reporter is None:
        yield TaskHandle(None, t)
        return
    reporter.push(t)
    try:
        yield TaskHandle(reporter, t)
    finally:
        reporter.pop(t)


def active() -> bool:
    return _current.get() is not None


def interval_from_env(default: float = DEFAULT_INTERVAL) -> float:
    raw = os.environ.get(ENV_INTERVAL)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value >= 0 else default


def make_reporter(title: str, stream: IO[str] | None = None, clock: Clock = time.monotonic,
                  interval: float | None = None, terminal: bool | None = None) -> Reporter:
    """A terminal bar when stderr is an interactive terminal (``terminal=None``: detect), else lines."""
    if terminal is None:
        from rich.console import Console

        terminal = stream is None and Console(stderr=True).is_interactive
    if terminal:
        return TerminalReporter(title, clock=clock)
    return LineReporter(title, stream, clock, interval_from_env() if interval is None else interval)


@contextlib.contextmanager
def reporting(title: str, quiet: bool = False, **kwargs: Any) -> Iterator[Reporter | None]:
    """Install a reporter for the block (none when ``quiet``); the jobs' ``task()`` calls report to it."""
    if quiet:
        yield None
        return
    reporter = make_reporter(title, **kwargs)
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)
        reporter.close()


@contextlib.contextmanager
def installed(reporter: Reporter | None) -> Iterator[None]:
    """Make ``reporter`` the ambient one for the block (tests: a LineReporter with a fake clock)."""
    token = _current.set(reporter)
    try:
        yield
    finally:
        _current.reset(token)
