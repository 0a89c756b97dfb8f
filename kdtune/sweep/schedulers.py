"""The baseline inside the sweep's Tune experiment: a trial that shares the sweep's slots but is no candidate.

Ray Tune runs one experiment at a time in a driver, so a baseline run as an experiment of its own leaves
every slot but its one idle while it trains.  Run as the sweep's first trial (`kdtune.sweep.settings.BASELINE`),
sweep trials fill the other slots; but ASHA must never stop it (it is the reference every gain is paired
with, and it never competes), and Optuna must never be told of it (alpha = 0 lies outside the searched
space; see `kdtune.sweep.searchers`).  A grid is given to Tune as its list of points, the baseline's first
(`GridPoints`): Tune's own grid expansion cannot add one point outside the grid.
"""

from __future__ import annotations

import pickle

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

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


class GridPoints(Searcher):
    """Suggests the given configurations, one trial each, in order; the experiment's other values come from its
    param_space.  Its state (how many were suggested) is saved with the experiment, so a resume goes on."""

    def __init__(self, points: list[dict]):
        super().__init__()
        self.points = [dict(point) for point in points]
        self.suggested = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def suggest(self, trial_id: str):
        if self.suggested == len(self.points):
            return Searcher.FINISHED
        self.suggested += 1
        return dict(self.points[self.suggested - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        pass  # a grid does not learn from results

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as file:
            pickle.dump({"points": self.points, "suggested": self.suggested}, file)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
