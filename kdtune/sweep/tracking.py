"""Experiment tracking beyond Tune's own files: Ray's MLflow and Weights & Biases callbacks.

Tune already writes TensorBoard event files, progress.csv and result.json for every trial into the
experiment's `sweep/` and `confirm/` folders.  `--mlflow URI` and `--wandb PROJECT` add Ray's
`MLflowLoggerCallback` / `WandbLoggerCallback`: one run per trial, in one MLflow experiment or W&B group
named after the kdtune experiment, tagged with its phase (a trial's own, for the baseline that trains in the
sweep's experiment).  Both are optional extras
(`pip install 'kdtune[mlflow]'`, `'kdtune[wandb]'`).
"""

from __future__ import annotations

import importlib.util

from kdtune.engine.errors import UserError, first_line


def check_installed(module: str, flag: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{flag} needs the {module} package, which is not installed: pip install 'kdtune[{extra}]'")


def check_tracking(mlflow_uri: str | None, wandb_project: str | None) -> None:
    """Refuse a tracker whose package is missing before any work is done."""
    if mlflow_uri is not None:
        check_installed("mlflow", "--mlflow", "mlflow")
    if wandb_project is not None:
        check_installed("wandb", "--wandb", "wandb")


def tracking_callbacks(mlflow_uri: str | None, wandb_project: str | None, experiment: str, phase: str) -> list:
    """The Tune callbacks that log every trial of `phase` of `experiment` to MLflow and/or W&B."""
    check_tracking(mlflow_uri, wandb_project)
    callbacks = []
    if mlflow_uri is not None:
        from mlflow.exceptions import MlflowException

        from kdtune.sweep.tracker_callbacks import PhaseTaggedMLflow

        callback = PhaseTaggedMLflow(tracking_uri=mlflow_uri, experiment_name=experiment,
                                     tags={"kdtune_phase": phase})
        try:
            callback.setup()  # reaches the store and creates the experiment now, not inside Tune's loop
        except (MlflowException, OSError) as error:
            raise UserError(f"--mlflow {mlflow_uri}: {' '.join(str(error).split())}") from None
        callbacks.append(callback)
    if wandb_project is not None:
        from kdtune.sweep.tracker_callbacks import PhaseTaggedWandb

        callback = PhaseTaggedWandb(project=wandb_project, group=experiment, job_type=phase)
        try:
            callback.setup()  # finds the API key (or offline mode) now, not inside Tune's loop
        except ValueError as error:
            raise UserError(f"--wandb {wandb_project}: {first_line(error)} (or set WANDB_MODE=offline)") from None
        callbacks.append(callback)
    return callbacks

