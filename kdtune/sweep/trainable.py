"""The Ray Tune trainable: a pack of students (`kdtune.engine.pack`) reporting and checkpointing every epoch.

A trial trains every seed of one configuration in lockstep: its config holds what varies (temperature,
alpha, method) and `seeds`; everything else comes in `base`.  Each epoch it reports the mean over its seeds
(`val_acc` is what Tune, ASHA and Optuna see: one value per configuration) and every seed's own
metrics as `s<seed>/<name>`, which `kdtune.report.results` unpacks into one row per (configuration, seed).
Its checkpoint holds every member, so a retried or resumed pack continues from its last epoch.

The dataset splits and the teacher-logit cache arrive once through the object
store (`tune.with_parameters`) as numpy arrays, which Ray shares zero-copy and
read-only between the trials of a node.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings

import numpy as np
import torch

from kdtune.engine.config import RunConfig
from kdtune.engine.data import Splits
from kdtune.engine.pack import member_names, pack_metrics, train_pack
from kdtune.engine.teacher import CachedTeacher, LogitCache

STATE_FILE = "state.pt"
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


def member_configs(config: dict, base: dict) -> list[RunConfig]:
    """The runs of a trial: one per entry of config["members"] (--pack N: students of any configurations),
    else one per seed in config["seeds"] (a trial of an older kdtune has one "seed")."""
    if "members" in config:
        return [RunConfig.from_dict({**base, **{k: v for k, v in m.items() if k != "phase"}}) for m in config["members"]]
    varied = {k: v for k, v in config.items() if k not in ("seeds", "phase")}  # phase: the baseline's, in the sweep
    seeds = config["seeds"] if "seeds" in config else [varied.pop("seed", 0)]
    varied.pop("seed", None)
    return [RunConfig.from_dict({**base, **varied, "seed": int(seed)}) for seed in seeds]


def kd_trainable(config: dict, *, base: dict, splits: dict, cache: dict | None, test_every: int = 0,
                 pack_mode: str = "loop") -> None:
    from ray import tune

    # Ray Train logs "Checkpoint successfully created at ..." for every epoch of every trial.
    logging.getLogger("ray.train").setLevel(logging.WARNING)

    runs = member_configs(config, base)
    device = trial_device()
    data = from_shared(Splits, splits)
    names = member_names(None if "members" in config else [run.seed for run in runs], len(runs))
    # Every student, the no-KD ones too, is measured against the teacher (agreement, fidelity on the test set).
    teacher = CachedTeacher(from_shared(LogitCache, cache), data, device) if cache is not None else None

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = load_trial_state(os.path.join(folder, STATE_FILE))
        resume = saved["members"] if "members" in saved else [saved]  # an unpacked trial of an older kdtune

    def on_epoch(metrics: list[dict], states: list[dict]) -> None:
        _maybe_fail(next(m for m in metrics if m is not None)["epoch"])
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"members": states}, os.path.join(folder, STATE_FILE))
            tune.report(_tune_metrics(pack_metrics(metrics, runs, names), runs),
                        checkpoint=tune.Checkpoint.from_directory(folder))

    train_pack(runs, data, device, teacher=teacher, on_epoch=on_epoch, resume=resume, test_every=test_every,
               mode=pack_mode)


def load_trial_state(path: str) -> dict:
    """A trial checkpoint, its tensors on the CPU whatever device saved them: a GPU trial may resume on a CPU node.

    `train` moves the model and optimizer state to the trial's device; RNG states must be CPU tensors.
    """
    return torch.load(path, map_location="cpu", weights_only=True)


def _tune_metrics(metrics: dict, runs: list[RunConfig]) -> dict:
    """The epoch's metrics with the trial's identity, so every result row says what it measured."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    shared = {key: getattr(runs[0], key) for key in ("temperature", "alpha", "method")
              if all(getattr(run, key) == getattr(runs[0], key) for run in runs)}  # a --pack N trial mixes them
    return {**metrics, **shared, "node_id": node}


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
