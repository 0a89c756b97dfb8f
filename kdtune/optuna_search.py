"""Ray's OptunaSearch, telling Optuna the truth about trials that did not finish.

Stock `OptunaSearch.on_trial_complete` records a trial that ASHA stopped early
as COMPLETE with its early (low) accuracy, which teaches the sampler that the
region is bad.  Here such a trial is told as PRUNED, and a trial that diverged
(non-finite loss) as FAIL, so no NaN or early score reaches the study.
"""

from __future__ import annotations

import math

from ray.tune.search.optuna import OptunaSearch


class PruningAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, full_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.full_epochs = full_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        import optuna

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


SAMPLERS = ("tpe", "cmaes", "random")
