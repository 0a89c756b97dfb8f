"""The baseline inside the sweep's Tune experiment: a trial that shares the sweep's slots but is no candidate.

Ray Tune runs one experiment at a time in a driver, so a baseline run as an experiment of its own leaves
every slot but its one idle while it trains.  Run as the sweep's first trial (`kdtune.sweep.settings.BASELINE`),
sweep trials fill the other slots; but ASHA must never stop it (it is the reference every gain is paired
with, and it never competes), and Optuna must never be told of it (alpha = 0 lies outside the searched
space; see `kdtune.sweep.searchers`, which also gives a grid to Tune as its list of points, the baseline's
first: Tune's own grid expansion cannot add one point outside the grid).
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from kdtune.sweep.settings import is_baseline


class BaselineKeepingASHA(ASHAScheduler):
    """ASHA over the sweep's trials; the baseline's trial runs to its end and never enters a rung."""

    def on_trial_add(self, tune_controller, trial):
        if not is_baseline(trial.config):
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if is_baseline(trial.config):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict):
        if not is_baseline(trial.config):
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        if not is_baseline(trial.config):
            super().on_trial_remove(tune_controller, trial)
