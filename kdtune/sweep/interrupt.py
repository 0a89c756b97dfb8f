"""Ctrl-C during a sweep: the first stops the experiment at its next safe point, the second exits at once.

Ray Tune catches a SIGINT inside `tuner.fit()` itself: it stops its trials, saves their state, hands
SIGINT back to the handler installed before `fit()` and returns normally, as if the phase had ended.
A sweep that only looked at what `fit()` returned would therefore start its next phase.  `StopRequest`
is the handler installed before `fit()`; Tune giving it SIGINT back is how it learns that Tune was
interrupted.  Outside `fit()` (the teacher task, between phases) it records the request itself, and
the sweep stops before anything new starts.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class StopRequest:
    """Within `with StopRequest() as stop:`, `stop.requested` says whether the user pressed Ctrl-C."""

    def __init__(self):
        self.requested = False
        self._in_tune = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum, frame) -> None:
        if self.requested or self._in_tune:
            # Inside fit() Tune takes the first Ctrl-C itself; reaching us there, this is the second.
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping at the next safe point, nothing new starts (Ctrl-C again to exit at once)",
              file=sys.stderr, flush=True)

    def run_tune(self, fit: Callable[[], T]) -> T | None:
        """Run a Tuner's `fit` unless a stop was requested already (then None); afterwards `requested` is
        also true when Tune stopped because of Ctrl-C.

        A Ctrl-C in the moment before Tune installs its handler reaches ours as if it were the second and
        exits at once: still resumable, since a phase that never ran starts afresh on resume.
        """
        if self.requested:
            return None
        tune_catches = not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
        self._in_tune = True
        try:
            return fit()
        finally:
            # Tune hands SIGINT back to us only after it took one; otherwise its handler is still installed.
            if tune_catches and signal.getsignal(signal.SIGINT) == self._on_sigint:
                self.requested = True
            signal.signal(signal.SIGINT, self._on_sigint)
            self._in_tune = False


def exit_at_once_on_ctrl_c() -> None:
    """From now on Ctrl-C ends the process at once: the user asked to stop, so clean-up (Ray's shutdown) may be skipped."""
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
