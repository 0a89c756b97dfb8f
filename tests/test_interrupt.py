"""StopRequest: a first Ctrl-C is recorded, a second exits at once, and one that Tune took inside fit() is seen.

`tune_like_fit` does what Ray Tune's fit() does with SIGINT (ray/tune/tune.py, `_setup_signal_catching`):
install its own handler, and when a SIGINT comes, stop and hand SIGINT back to the previous handler.
The CLI test in test_resume.py sends a real SIGINT to a real sweep.
"""

from __future__ import annotations

import os
import signal

import pytest

from kdtune.sweep.interrupt import StopRequest


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # handled in this thread before os.kill returns to Python code


def tune_like_fit(interrupt: bool):
    def fit() -> str:
        previous = signal.getsignal(signal.SIGINT)
        taken = []

        def tune_handler(signum, frame):
            taken.append(signum)
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, tune_handler)
        if interrupt:
            ctrl_c()
            assert taken  # Tune, not StopRequest, took this one
        return "results"

    return fit


@pytest.fixture(autouse=True)
def tune_catches_sigint(monkeypatch):
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)


def test_first_ctrl_c_is_recorded_and_the_second_exits_at_once(capsys):
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.requested
        ctrl_c()
        assert stop.requested
        assert "Ctrl-C again to exit at once" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()
    assert signal.getsignal(signal.SIGINT) == before


def test_a_ctrl_c_that_tune_took_stops_the_sweep():
    with StopRequest() as stop:
        assert stop.run_tune(tune_like_fit(interrupt=True)) == "results"
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):  # our handler is back: the next Ctrl-C exits at once
            ctrl_c()


def test_a_phase_that_ran_to_its_end_is_not_taken_for_an_interrupted_one():
    with StopRequest() as stop:
        stop.run_tune(tune_like_fit(interrupt=False))
        assert not stop.requested
        # Tune leaves its handler installed after fit(); a Ctrl-C between phases must still reach us.
        ctrl_c()
        assert stop.requested


def test_a_second_ctrl_c_inside_fit_exits_at_once():
    def fit_interrupted_twice():
        tune_like_fit(interrupt=True)()
        ctrl_c()  # Tune handed SIGINT back: this one is ours

    with StopRequest() as stop:
        with pytest.raises(KeyboardInterrupt):
            stop.run_tune(fit_interrupted_twice)


def test_a_stop_requested_before_fit_skips_it():
    with StopRequest() as stop:
        ctrl_c()
        assert stop.run_tune(lambda: pytest.fail("a phase started after Ctrl-C")) is None
