"""The sweep's searchers: a grid given as its list of points, and Ray's OptunaSearch telling Optuna the truth
about trials that did not finish.

`GridPoints` suggests the grid's points in order, the no-KD baseline's first (Tune's own grid expansion
cannot add one point outside the grid).

Stock `OptunaSearch.on_trial_complete` records a trial that ASHA stopped early
as COMPLETE with its early (low) accuracy, which teaches the sampler that the
region is bad.  Here such a trial is told as PRUNED, and a trial that diverged
(non-finite loss) as FAIL, so no NaN or early score reaches the study.

Given a `baseline` config, its first suggestion is that config (the no-KD baseline, trained in the
sweep's experiment so that it shares its slots; see `kdtune.sweep.schedulers`), and nothing of that trial
reaches the study: it is no point of the searched space.
"""

from __future__ import annotations

import math
import pickle

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch


class PruningAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, full_epochs: int, baseline: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.full_epochs = full_epochs
        # Saved and restored with the searcher's state (OptunaSearch pickles its __dict__): a resumed sweep
        # neither suggests the baseline twice nor tells Optuna of it.
        self.baseline = baseline
        self.baseline_trial: str | None = None

    def suggest(self, trial_id: str) -> dict | None:
        if self.baseline is not None and self.baseline_trial in (None, trial_id):
            self.baseline_trial = trial_id
            return dict(self.baseline)
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id != self.baseline_trial:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        import optuna

        if trial_id == self.baseline_trial:
            return
        if error or not result or trial_id in self._completed_trials or "epoch" not in result:
            return super().on_trial_complete(trial_id, result, error)
        value = result.get(self.metric)
        diverged = bool(result.get("diverged")) or value is None or not math.isfinite(value)
        if diverged:
            state = optuna.trial.TrialState.FAIL
        elif result["epoch"] < self.full_epochs:
            state = optuna.trial.TrialState.PRUNED
        else:
            return super().on_trial_complete(trial_id, result, error)
        # Pruned trials keep their last intermediate value, which Optuna reads from the reports it got.
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)


def make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


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
