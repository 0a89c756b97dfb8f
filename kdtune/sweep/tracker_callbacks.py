"""Ray's MLflow and W&B callbacks, tagging each trial with its own phase.

The baseline trains as a trial of the sweep's experiment (see kdtune.sweep.schedulers), so the experiment's
phase is not every trial's: a trial whose config names its phase is tagged with that one.  Imported only
when a tracker is asked for (kdtune.sweep.tracking): each needs its optional package.
"""

from __future__ import annotations

import contextlib

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback


def trial_phase(trial, phase: str) -> str:
    """The trial's own phase when its config names one, else the experiment's."""
    return trial.config.get("phase", phase)


@contextlib.contextmanager
def own_phase(callback, options: str, key: str, trial):
    """While a trial's run starts: the callback's `options` dict (what every run gets) with `key` set to the
    trial's own phase; the experiment's again afterwards, for the next trial."""
    shared = getattr(callback, options)
    setattr(callback, options, {**shared, key: trial_phase(trial, shared[key])})
    try:
        yield
    finally:
        setattr(callback, options, shared)


class PhaseTaggedMLflow(MLflowLoggerCallback):
    """One MLflow run per trial, its `kdtune_phase` tag the trial's own phase."""

    def log_trial_start(self, trial):
        with own_phase(self, "tags", "kdtune_phase", trial):
            super().log_trial_start(trial)


class PhaseTaggedWandb(WandbLoggerCallback):
    """One W&B run per trial, its `job_type` the trial's own phase."""

    def log_trial_start(self, trial):
        with own_phase(self, "kwargs", "job_type", trial):
            super().log_trial_start(trial)
