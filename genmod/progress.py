"""Progress of long waits (a bandwidth search, Monte Carlo likelihoods, evaluating or loading
large data): a tiny reporter protocol, standard library only, so ``genmod.models`` can report
without importing anything beyond torch.

Code that waits reports through a :class:`Task`::

    with Task("bandwidth search", progress, unit="step") as task:
        for ...:
            task.update(h=h, objective=value)

and the ``progress`` argument of a genmod function decides where it goes:

* ``False``: nowhere.
* ``None`` (the default): the reporter installed by :func:`reporting` (the command-line tools
  install one), else log records of the ``"genmod.progress"`` logger at INFO level when that
  logger is enabled for INFO, else nowhere. The Python API is therefore silent unless asked:
  ``logging.basicConfig(level=logging.INFO)`` or
  ``logging.getLogger("genmod.progress").setLevel(logging.INFO)`` (with a handler) turns on
  lines every few seconds.
* ``True``: :func:`console_reporter` (a live bar on a terminal, a line every few seconds
  otherwise, on stderr).
* a callable: called with every :class:`Update` (``print`` works: ``str(update)`` is a line).

Lines are throttled (:class:`LogReporter`): one every ``GENMOD_PROGRESS_EVERY`` seconds
(default 5) while a task lasts, and its final line; waits shorter than that print nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Union

__all__ = [
    "LogReporter",
    "Progress",
    "Reporter",
    "Task",
    "Update",
    "console_reporter",
    "interval",
    "reporting",
    "resolve",
]

LOGGER = "genmod.progress"
"""Name of the logger progress lines go to by default."""

DEFAULT_EVERY = 5.0
"""Seconds between two progress lines of one task (``GENMOD_PROGRESS_EVERY`` overrides)."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


@dataclass
class Update:
    """One progress report of a task.

    Attributes:
        task: what is being waited for, e.g. ``"bandwidth search"``.
        done: units done so far (steps, batches, rows, samples).
        total: units in all, or ``None`` when unknown (an iterative search).
        unit: the unit's name.
        elapsed: seconds since the task started.
        info: current values worth showing, e.g. ``{"h": 0.31, "objective": -1.27}``.
        finished: True on the task's last update.
    """

    task: str
    done: int
    total: int | None
    unit: str = "step"
    elapsed: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    finished: bool = False

    def __str__(self) -> str:
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        text = f"{self.task}: {count} {self.unit}{'s' if self.done != 1 else ''}"
        if self.total and not self.finished:
            text += f" ({100.0 * self.done / self.total:.0f}%)"
        info = ", ".join(f"{key} {_fmt(value)}" for key, value in self.info.items())
        if info:
            text += f", {info}"
        if self.finished:
            return f"{text}; done in {self.elapsed:.1f} s"
        return f"{text}; {self.elapsed:.1f} s so far"


Reporter = Callable[[Update], None]
Progress = Union[bool, None, Reporter]  # noqa: UP007  (a runtime alias, read by humans)
"""What a ``progress`` argument accepts: ``False``, ``None``, ``True`` or a reporter."""

_ACTIVE: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar(
    "genmod_progress", default=None
)


def interval() -> float:
    """Seconds between two progress lines: ``GENMOD_PROGRESS_EVERY``, default 5."""
    try:
        return max(0.0, float(os.environ.get("GENMOD_PROGRESS_EVERY", DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


class LogReporter:
    """Writes an update as one line to ``logger`` (INFO), throttled per task: a line once
    ``every`` seconds have passed since the task started or since its last line, and the
    finished line of a task that printed a line or lasted ``every`` seconds. Waits shorter
    than ``every`` print nothing; ``every=0`` prints every update."""

    def __init__(self, logger: logging.Logger | str = LOGGER, every: float | None = None) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.every = interval() if every is None else float(every)
        self._printed: dict[str, float] = {}

    def __call__(self, update: Update) -> None:
        last = self._printed.get(update.task)
        if update.finished:
            self._printed.pop(update.task, None)
            if last is None and update.elapsed < self.every:
                return
        elif self.every > 0 and update.elapsed - (last or 0.0) < self.every:
            return
        elif self.every > 0 and update.total and update.done >= update.total:
            return  # all done: the finished line follows
        else:
            self._printed[update.task] = update.elapsed
        self.logger.info("%s", update)


class _StreamReporter(LogReporter):
    """:class:`LogReporter` writing plain lines to a stream instead of a logger."""

    def __init__(self, stream: IO[str], every: float | None = None) -> None:
        super().__init__(LOGGER, every)
        self.stream = stream
        self.logger = logging.getLogger(f"{LOGGER}.stream")
        self.logger.propagate = False
        self.logger.handlers = [logging.StreamHandler(stream)]
        self.logger.setLevel(logging.INFO)


class _BarReporter:
    """A tqdm bar per task on a terminal stream; the finished task's line goes to
    ``finished`` (so logs keep a record) and its bar is removed."""

    def __init__(self, stream: IO[str], finished: Reporter | None) -> None:
        self.stream = stream
        self.finished = finished
        self._bars: dict[str, Any] = {}

    def __call__(self, update: Update) -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(update.task)
        if bar is None and not update.finished:
            bar = tqdm(
                total=update.total,
                desc=update.task,
                unit=update.unit,
                file=self.stream,
                leave=False,
                position=len(self._bars),
                dynamic_ncols=True,
                delay=1.0,  # waits under a second show no bar
            )
            self._bars[update.task] = bar
        if bar is not None:
            if update.info:
                bar.set_postfix({k: _fmt(v) for k, v in update.info.items()}, refresh=False)
            bar.update(update.done - bar.n)  # draws once the delay has passed
        if update.finished:
            if bar is not None:
                bar.close()
                self._bars.pop(update.task, None)
            if self.finished is not None:
                self.finished(update)


def console_reporter(
    stream: IO[str] | None = None, *, log: logging.Logger | str | None = None
) -> Reporter:
    """A live bar when ``stream`` (default stderr) is a terminal, else a throttled line.

    Args:
        stream: where the bar or the lines go.
        log: a logger (or its name) to write the lines to instead of ``stream`` when it is
            not a terminal, and the one line of each finished task when it is.
    """
    stream = sys.stderr if stream is None else stream
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    lines: Reporter = LogReporter(log) if log is not None else _StreamReporter(stream)
    if is_tty:
        return _BarReporter(stream, LogReporter(log) if log is not None else None)
    return lines


@contextlib.contextmanager
def reporting(progress: Progress = True) -> Iterator[Reporter | None]:
    """Within the block, genmod functions called with ``progress=None`` report to
    ``resolve(progress)`` (``True``: :func:`console_reporter`)."""
    reporter = _explicit(progress)
    token = _ACTIVE.set(reporter)
    try:
        yield reporter
    finally:
        _ACTIVE.reset(token)


def _explicit(progress: Progress) -> Reporter | None:
    if progress is False or progress is None:
        return None
    if progress is True:
        return console_reporter()
    if callable(progress):
        return progress
    raise ValueError(f"progress must be True, False, None or a callable, got {progress!r}")


def resolve(progress: Progress = None) -> Reporter | None:
    """The reporter a ``progress`` argument stands for (see the module docstring), or
    ``None`` for silence.

    Raises:
        ValueError: naming ``progress`` when it is none of the accepted values.
    """
    if progress is not None:
        return _explicit(progress)
    active = _ACTIVE.get()
    if active is not None:
        return active
    logger = logging.getLogger(LOGGER)
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        return LogReporter(logger)
    return None


class Task:
    """One wait reported to a reporter; a no-op when ``progress`` resolves to silence.

    Args:
        name: what is being waited for (shown in every line).
        progress: see :func:`resolve`.
        total: units in all, or ``None`` when unknown.
        unit: the unit's name (singular).
    """

    def __init__(
        self, name: str, progress: Progress = None, *, total: int | None = None, unit: str = "step"
    ) -> None:
        self.reporter = resolve(progress)
        self.name = name
        self.total = total
        self.unit = unit
        self.done = 0
        self.info: dict[str, Any] = {}
        self._start = time.monotonic()
        self._closed = False

    @property
    def active(self) -> bool:
        """Whether updates go anywhere (callers may skip computing what they would show)."""
        return self.reporter is not None

    def _send(self, finished: bool) -> None:
        if self.reporter is None:
            return
        self.reporter(
            Update(
                self.name,
                self.done,
                self.total,
                self.unit,
                time.monotonic() - self._start,
                dict(self.info),
                finished,
            )
        )

    def update(self, advance: int = 1, **info: Any) -> None:
        """``advance`` more units done; ``info`` replaces the values shown."""
        self.done += advance
        if info:
            self.info = info
        self._send(False)

    def close(self, **info: Any) -> None:
        """The last update (once), with final ``info`` when given."""
        if self._closed:
            return
        self._closed = True
        if info:
            self.info = info
        self._send(True)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._closed = True  # an error says what happened; no "done" line
