"""Ray's MLflow and W&B callbacks, tagging each trial with its own phase.

The baseline trains as a trial of the sweep's experiment (see kdtune.shared_slots), so the experiment's
phase is not every trial's: a trial whose config names its phase is tagged with that one.  Imported only
when a tracker is asked for (kdtune.tracking): each needs its optional package.
"""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback


def trial_phase(trial, phase: str) -> str:
    """The trial's own phase when its config names one, else the experiment's."""
    return trial.config.get("phase", phase)


class PhaseTaggedMLflow(MLflowLoggerCallback):
    """One MLflow run per trial, its `kdtune_phase` tag the trial's own phase."""

    def log_trial_start(self, trial):
        shared = self.tags
        self.tags = {**shared, "kdtune_phase": trial_phase(trial, shared["kdtune_phase"])}
        try:
            super().log_trial_start(trial)
        finally:
            self.tags = shared


class PhaseTaggedWandb(WandbLoggerCallback):
    """One W&B run per trial, its `job_type` the trial's own phase."""

    def log_trial_start(self, trial):
        shared = self.kwargs
        self.kwargs = {**shared, "job_type": trial_phase(trial, shared["job_type"])}
        try:
            super().log_trial_start(trial)
        finally:
            self.kwargs = shared
