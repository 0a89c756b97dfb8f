"""The Ray Tune trainable: a pack of students (`kdtune.engine.pack`) reporting and checkpointing every epoch.

A trial trains every seed of one configuration in lockstep: its config holds what varies (temperature,
alpha, method) and `seeds`; everything else comes in `base`.  Each epoch it reports the mean over its seeds
(`val_acc` is what Tune, ASHA and Optuna see: one value per configuration) and every seed's own
metrics as `s<seed>/<name>`, which `kdtune.report.results` unpacks into one row per (configuration, seed).
Its checkpoint holds every member, so a retried or resumed pack continues from its last checkpointed epoch
(`CheckpointPolicy`: every --checkpoint-every epochs, by default as often as keeps writing cheap).

The dataset splits and the teacher-logit cache arrive once through the object
store (`tune.with_parameters`) as numpy arrays, which Ray shares zero-copy and
read-only between the trials of a node.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings

import numpy as np
import torch

from kdtune.engine.config import RunConfig
from kdtune.engine.data import Splits
from kdtune.engine.device import configure
from kdtune.engine.pack import decide_pack_mode, member_names, pack_metrics, train_pack
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


def trial_device(deterministic: bool = False) -> torch.device:
    """The GPU Ray assigned to this trial or task, else the CPU with one thread per assigned CPU; configured for
    training (kdtune.engine.device.configure)."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        device = torch.device("cpu")
    configure(device, deterministic)
    return device


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
                 pack_mode: str = "loop", deterministic: bool = False, checkpoint_every: int | None = None,
                 compiled: bool = False) -> None:
    from ray import tune

    # Ray Train logs "Checkpoint successfully created at ..." for every epoch of every trial.
    logging.getLogger("ray.train").setLevel(logging.WARNING)

    runs = member_configs(config, base)
    device = trial_device(deterministic)
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

    # Loop or stack, measured on this trial's device when auto; said in every report of the trial.
    choice = decide_pack_mode(pack_mode, runs, data, device, teacher)
    policy = CheckpointPolicy(checkpoint_every, max(run.epochs for run in runs))

    def on_epoch(metrics: list[dict], states: list[dict]) -> None:
        epoch = next(m for m in metrics if m is not None)["epoch"]
        _maybe_fail(epoch)
        report = {**_tune_metrics(pack_metrics(metrics, runs, names), runs), **choice.metrics()}
        if not policy.due(epoch, any(m is not None and m["diverged"] for m in metrics)):
            tune.report(report)
            return
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"members": states}, os.path.join(folder, STATE_FILE))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
        policy.written(time.perf_counter() - started)

    train_pack(runs, data, device, teacher=teacher, on_epoch=on_epoch, resume=resume, test_every=test_every,
               mode=choice.mode, compiled=compiled)


class CheckpointPolicy:
    """When a trial checkpoints: every `every` epochs and always after the last (or a diverged) one; with
    `every` None, whenever the training since the last checkpoint has taken COST_RATIO times as long as
    writing that checkpoint did (and after the first epoch, to measure it), so that writing costs at most
    about 1/COST_RATIO of the training.  A retried or resumed trial repeats at most the epochs since."""

    COST_RATIO = 20

    def __init__(self, every: int | None, epochs: int):
        self.every, self.epochs = every, epochs
        self.write_s: float | None = None
        self.since = time.perf_counter()

    def due(self, epoch: int, diverged: bool = False) -> bool:
        if epoch >= self.epochs or diverged:
            return True
        if self.every is not None:
            return epoch % self.every == 0
        return self.write_s is None or time.perf_counter() - self.since >= self.COST_RATIO * self.write_s

    def written(self, seconds: float) -> None:
        self.write_s, self.since = seconds, time.perf_counter()


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
