"""Progress of long phases (training, the logit cache, a sweep's trial epochs): a live tqdm bar on a terminal,
and `LogLines` elsewhere, a few plain timestamped lines that read well in a log file.

A tqdm bar redirected to a file writes every redraw, with carriage returns and colour codes: thousands of
bytes for a teacher's few epochs.  Pure Python: the engine and the sweep driver (kdtune.sweep.progress) share it,
and it never imports Ray.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO, Union

Progress = Union[bool, Callable[..., Any]]  # False, True (see progress_bar) or a tqdm-like class

LINE_PARTS = 10  # a line at most every tenth of a phase...
LINE_INTERVAL_S = 60.0  # ...and at most once a minute: both must have passed since the last line


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal (a closed or fake stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(progress: Progress, total: int, desc: str, initial: int = 0, unit: str = "step"):
    """A bar with update / set_description / close / write, or None when `progress` is False.

    `progress` True is a tqdm bar when stderr is a terminal and `LogLines` on stderr otherwise; else it is a
    tqdm-like class called with total, desc and unit.  Code that runs inside Ray tasks passes
    `ray.experimental.tqdm_ray.tqdm` when the driver's stderr is a terminal, so that the driver draws live bars,
    and `LogLines` when it is not: a worker's stderr is a log file, which Ray forwards to the driver line by line.
    """
    if not progress:
        return None
    if progress is True and is_terminal(sys.stderr):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    if progress is True or progress is LogLines:
        return LogLines(total, desc, unit, initial=initial)
    bar = progress(total=total, desc=desc, unit=unit)
    if initial:
        bar.update(initial)
    return bar


def duration(seconds: float) -> str:
    """'45s', '1m12s' or '2h03m'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LogLines:
    """tqdm's interface as the loops use it, written as plain lines to `file` (stderr by default): one when the
    phase starts, one when it closes, and one in between each time both 1/`LINE_PARTS` of the total and
    `LINE_INTERVAL_S` seconds of `clock` have passed since the last, e.g.
    `[12:03:04] teacher resnet20: step 54/135 (40%), 1m12s elapsed, ~1m48s left`."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 file: TextIO | None = None, clock: Callable[[], float] = time.time):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file = file or sys.stderr
        self.clock = clock
        self.started = self.last_time = clock()
        self.initial = self.last_n = initial
        self.closed = False
        self._line(self.started, ("resumed at " if initial else "started, ") + self._position())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        # In integers: 0.1 * 70 is more than 7 in floating point.
        enough_progress = self.total is None or (self.n - self.last_n) * LINE_PARTS >= self.total
        if enough_progress and now - self.last_time >= LINE_INTERVAL_S and not self._complete():
            self.last_n, self.last_time = self.n, now
            self._line(now, f"{self._position()}, {duration(now - self.started)} elapsed{self._left(now)}")

    def set_description(self, desc: str) -> None:
        self.desc = desc  # shown from the next line on

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        taken = duration(now - self.started)
        self._line(now, f"done, {self._position()} in {taken}" if self._complete()
                   else f"ended at {self._position()} after {taken}")

    @staticmethod
    def write(line: str) -> None:
        """A line of its own on stdout, as tqdm.write."""
        print(line, flush=True)

    def _complete(self) -> bool:
        return self.total is not None and self.n >= self.total

    def _position(self) -> str:
        if not self.total:
            return f"{self.unit} {self.n}"
        return f"{self.unit} {self.n}/{self.total} ({100 * self.n // self.total}%)"

    def _left(self, now: float) -> str:
        done, elapsed = self.n - self.initial, now - self.started
        if not self.total or done <= 0 or elapsed <= 0:
            return ""
        return f", ~{duration((self.total - self.n) * elapsed / done)} left"

    def _line(self, now: float, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        print(f"[{stamp}] {self.desc}: {text}", file=self.file, flush=True)
