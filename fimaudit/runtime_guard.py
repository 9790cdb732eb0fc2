"""Whole-run guards: SIGINT/SIGTERM and ``--timeout`` end a run cleanly, and files are written atomically.

A signal or an elapsed timeout raises an exception deriving from ``BaseException`` (so that no
``except Exception`` in the core swallows it); it unwinds the run, every temporary file made by
``write_atomic`` is removed on the way out, and the CLI maps it to exit 130 (SIGINT), 143
(SIGTERM) or 2 (timeout) with one line on stderr. Nothing is half-written: outputs appear only by
``os.replace`` of a complete temporary file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import ConfigError

_temp_files: set[str] = set()


class Interrupted(BaseException):
    """The run received SIGINT or SIGTERM; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)

    @property
    def message(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}; no report was written"


class RunTimeout(BaseException):
    """The whole run took longer than ``--timeout``; the CLI exits with 2."""

    exit_code = 2

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the run exceeded --timeout {seconds:g} s and was stopped; no report was written")

    @property
    def message(self) -> str:
        return str(self)


def _raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def guarded_run(timeout: float | None = None) -> Iterator[None]:
    """Within this block SIGINT/SIGTERM raise ``Interrupted`` and ``timeout`` seconds raise ``RunTimeout``.

    Outside the main thread (where Python cannot install handlers) the block runs unguarded.
    """
    if timeout is not None and not (timeout > 0 and timeout < 1e9):
        raise ConfigError("--timeout must be a positive number of seconds")
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(_signum: int, _frame) -> None:
        raise RunTimeout(float(timeout))  # type: ignore[arg-type]

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old_alarm = signal.getsignal(signal.SIGALRM) if timeout is not None else None
    try:
        for s in previous:
            signal.signal(s, _raise_interrupted)
        if timeout is not None:
            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, float(timeout))
        yield
    finally:
        if timeout is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
        for s, handler in previous.items():
            signal.signal(s, handler)
        remove_temp_files()


def remove_temp_files() -> None:
    """Delete every temporary file still registered (a write that was cut short)."""
    for tmp in list(_temp_files):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _temp_files.discard(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[object], None], *, binary: bool = False) -> None:
    """Create ``path`` through a temporary file in the same folder, renamed into place once complete.

    ``write(fh)`` fills the open temporary file. On any exception, signal or timeout the temporary
    file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{path} is a folder; give a file name")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {path}: folder {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    _temp_files.add(tmp)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, target)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    finally:
        if os.path.exists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _temp_files.discard(tmp)
