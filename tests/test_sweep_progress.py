"""The driver's sweep output: one line per trial that ends, saying what it ran and how it ended."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")
from kdtune.sweep.progress import SweepProgress  # noqa: E402


def trial(config: dict, **result) -> SimpleNamespace:
    return SimpleNamespace(config=config, last_result=result, path="/runs/t1")


def test_one_line_per_ended_trial(capsys):
    progress = SweepProgress("sweep", total_epochs=12, full_epochs=3)
    progress.setup()
    distilled = {"temperature": 4.0, "alpha": 0.5, "seeds": [0, 1, 2]}  # a trial is a pack of seeds
    for epoch in (1, 2, 3):
        progress.on_trial_result(epoch, [], trial(distilled), {"epoch": epoch})
    progress.on_trial_complete(3, [], trial(distilled, epoch=3, val_acc=0.4512, test_acc=0.4431, temperature=4.0,
                                            alpha=0.5))
    progress.on_trial_complete(4, [], trial(distilled, epoch=1, val_acc=0.2))  # no test set before the last epoch
    progress.on_trial_complete(5, [], trial(distilled, epoch=2, val_acc=0.1, test_acc=0.1, diverged=True))
    progress.on_trial_recover(6, [], trial(distilled, epoch=1, val_acc=0.2, test_acc=0.1))
    progress.on_trial_error(7, [], trial({"temperature": 2.0, "alpha": 0.5, "seeds": [2]}))
    progress.on_trial_complete(8, [], trial({"temperature": 4.0, "alpha": 0.9, "method": "ctkd", "seeds": [0, 1]},
                                            epoch=3, val_acc=0.5, test_acc=0.5))
    progress.on_trial_complete(9, [], trial({"members": [{"seed": 0, "alpha": 0.0}, {"seed": 0, "alpha": 0.5}]},
                                            epoch=3, val_acc=0.5, test_acc=0.5))
    assert progress.bar.n == 3
    progress.on_experiment_end([])
    captured = capsys.readouterr()
    # Off a terminal (capsys is none) the epochs' progress is plain lines on stderr: a start and an end here.
    start, end = [line.split("] ", 1)[1] for line in captured.err.splitlines()]
    assert start == "sweep: trial epochs: started, epoch 0/12 (0%)"
    assert re.fullmatch(r"sweep: trial epochs: ended at epoch 3/12 \(25%\) after \d+s", end), end
    lines = [line for line in captured.out.splitlines() if line]
    assert lines == [
        "sweep T=4 alpha=0.5 seeds 0, 1, 2: finished after 3 epochs: val 45.12%, test 44.31%",
        "sweep T=4 alpha=0.5 seeds 0, 1, 2: stopped early after 1 epochs: val 20.00%",
        "sweep T=4 alpha=0.5 seeds 0, 1, 2: diverged after 2 epochs: val 10.00%, test 10.00%",
        "sweep T=4 alpha=0.5 seeds 0, 1, 2: failed, retrying from its last checkpoint",
        "sweep T=2 alpha=0.5 seed 2: errored (see /runs/t1/error.txt)",
        "sweep ctkd T=4 alpha=0.9 seeds 0, 1: finished after 3 epochs: val 50.00%, test 50.00%",
        "sweep pack of 2 students (mean over them): finished after 3 epochs: val 50.00%, test 50.00%",
    ]


def test_it_pickles_before_setup():
    """Tune saves its callbacks with the experiment state (for --resume): the bar is made later."""
    import pickle

    progress = pickle.loads(pickle.dumps(SweepProgress("baseline", 6, 3)))
    assert (progress.phase, progress.total_epochs, progress.bar) == ("baseline", 6, None)
