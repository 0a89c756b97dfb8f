"""The Ray Tune trainable: `kdtune.train.train` reporting and checkpointing every epoch.

The dataset splits and the teacher-logit cache arrive once through the object
store (`tune.with_parameters`) as numpy arrays, which Ray shares zero-copy and
read-only between the trials of a node.  The trial's config holds only what
varies (temperature, alpha, seed); everything else comes in `base`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings

import numpy as np
import torch

from kdtune.config import RunConfig
from kdtune.data import Splits
from kdtune.teacher import CachedTeacher, LogitCache
from kdtune.train import train

STATE_FILE = "state.pt"
SEED_INDEX = "__trial_index__"  # set by ray.tune.search.Repeater when Optuna points are replicated over seeds
FAIL_ENV = "KDTUNE_FAIL_AT_EPOCH"  # fault injection for tests: "EPOCH" or "EPOCH:MARKER_FILE"


def to_shared(obj) -> dict:
    """A Splits or LogitCache as a dict of numpy arrays (and plain values) for the object store."""
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in obj.__dict__.items()}


def from_shared(cls, shared: dict):
    with warnings.catch_warnings():
        # The arrays are read-only views of the object store; training only reads (indexes) them.
        warnings.simplefilter("ignore", UserWarning)
        return cls(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in shared.items()})


def trial_device() -> torch.device:
    """The GPU Ray assigned to this trial or task, else the CPU with one thread per assigned CPU."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    return torch.device("cpu")


def kd_trainable(config: dict, *, base: dict, splits: dict, cache: dict | None) -> None:
    from ray import tune

    # Ray Train logs "Checkpoint successfully created at ..." for every epoch of every trial.
    logging.getLogger("ray.train").setLevel(logging.WARNING)

    varied = {k: v for k, v in config.items() if k != SEED_INDEX}
    if SEED_INDEX in config:
        varied["seed"] = int(config[SEED_INDEX])
    run = RunConfig.from_dict({**base, **varied})
    device = trial_device()
    data = from_shared(Splits, splits)
    teacher = CachedTeacher(from_shared(LogitCache, cache), data, device) if run.alpha > 0 else None

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(os.path.join(folder, STATE_FILE), weights_only=True)

    def on_epoch(metrics: dict, state) -> None:
        _maybe_fail(metrics["epoch"])
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state(), os.path.join(folder, STATE_FILE))
            tune.report(_tune_metrics(metrics, run), checkpoint=tune.Checkpoint.from_directory(folder))

    train(run, data, device, teacher=teacher, on_epoch=on_epoch, resume=resume)


def _tune_metrics(metrics: dict, run: RunConfig) -> dict:
    """The epoch's metrics with the trial's identity, so every result row says what it measured."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return {**metrics, "temperature": run.temperature, "alpha": run.alpha, "seed": run.seed, "node_id": node}


def _maybe_fail(epoch: int) -> None:
    """Crash once at a given epoch when the test hook asks for it (the marker file makes it once)."""
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    at, _, marker = spec.partition(":")
    if epoch == int(at) and not (marker and os.path.exists(marker)):
        if marker:
            open(marker, "w").close()
        raise RuntimeError(f"injected failure at epoch {epoch} ({FAIL_ENV}={spec})")
