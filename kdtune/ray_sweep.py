"""Running a sweep on Ray: connect, prepare the teacher as a Ray task, run the Tune experiments.

Kept apart from `kdtune.sweep` (settings and plan) so that planning, dry runs
and reports never need a Ray cluster.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from kdtune.atomic import save_json, save_torch
from kdtune.data import Splits
from kdtune.errors import UserError
from kdtune.sweep import (METRIC, Resources, SweepSettings, check_models, check_storage_writable, load_splits,
                          sweep_points, tune_storage)
from kdtune.teacher import (add_to_store, assemble, cache_entries, cache_mode, compute_logits, find_teacher,
                            load_cached, store_entry, train_teacher)
from kdtune.trainable import from_shared, kd_trainable, to_shared, trial_device


# ----------------------------------------------------------------------------- cluster


def connect(address: str | None, runtime_env: dict | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "auto":
        _check_reachable(address)
    try:
        # Workers import kdtune as installed on each node (pip install -e . there too; see README), and the
        # user's model code from `runtime_env` (--py-modules, --working-dir), which Ray ships to every node.
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot connect to the Ray cluster at {address!r}: {first}") from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes: ray.init retries an unreachable GCS address for a long time."""
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"invalid Ray address {address!r}: use 'auto', host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise UserError(f"cannot reach the Ray cluster at {address!r}: {error.strerror or error}") from None


def check_cluster(resources: Resources, storage: str) -> None:
    """Refuse, before any work, what no node can run or what trials on other nodes could not save."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    gpus = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    if resources.cpus_per_trial > cpus:
        raise UserError(f"cpus-per-trial {resources.cpus_per_trial:g} is more than any node has (largest: {cpus:g} CPUs)")
    if resources.gpus_per_trial > gpus:
        raise UserError(f"gpus-per-trial {resources.gpus_per_trial:g} is more than any node has (largest: {gpus:g} GPUs)")
    if len(nodes) > 1 and "://" not in storage:
        raise UserError(
            f"storage path {storage} is local to this machine, but the cluster has {len(nodes)} nodes whose trials "
            f"could not save there; pass --storage-path with a URI every node reaches (s3://..., gs://..., or "
            f"file:///path on a filesystem all nodes mount)"
        )


# ----------------------------------------------------------------------------- teacher and cache


def _prepare_remote(config, shared_splits: dict, state: dict | None, names: list, aug_seed: int, precision: str):
    """Ray task: train the teacher when `state` is None, then compute the missing logits."""
    from kdtune.models import create_model

    device = trial_device()
    splits = from_shared(Splits, shared_splits)
    if state is None:
        model, meta = train_teacher(config, splits, device, progress=True)
    else:
        model, meta = create_model(config.model, splits.num_classes), None
        model.load_state_dict(state)
    logits = compute_logits(model, splits, names, aug_seed, device, precision, progress=True)
    return ({k: v.cpu() for k, v in model.state_dict().items()} if meta else None), meta, logits


def prepare_teacher(settings: SweepSettings, resources: Resources, splits: Splits, shared_ref):
    """The teacher (from the store, or trained as a Ray task) and the complete logit cache for the students."""
    import ray

    config = settings.teacher_config()
    trial_device = torch.device("cuda" if resources.gpus_per_trial > 0 else "cpu")
    mode = cache_mode(settings.precision, trial_device)
    teacher = find_teacher(config, splits, resources.teacher_store)
    if teacher is not None:
        files = cache_entries(teacher, splits, settings.aug_seed, settings.epochs, mode)
        loaded = load_cached(files, splits)
        missing = [name for name in files if name not in loaded]
        if not missing:
            return teacher, assemble(loaded, settings.epochs, settings.aug_seed, splits)
        state = teacher.model.state_dict()
        print(f"computing {len(missing)} missing teacher-logit cache entries as a Ray task")
    else:
        loaded, state = {}, None
        missing = ["val", "test", *range(settings.epochs)]
        print(f"training teacher {config.model} ({config.recipe}, {config.epochs} epochs) as a Ray task")
    task = ray.remote(_prepare_remote).options(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial)
    new_state, meta, logits = ray.get(task.remote(config, shared_ref, state, missing, settings.aug_seed, settings.precision))
    if teacher is None:
        from kdtune.models import create_model

        model = create_model(config.model, splits.num_classes)
        model.load_state_dict(new_state)
        teacher = add_to_store(store_entry(config, splits, resources.teacher_store), model.eval(), meta)
    files = cache_entries(teacher, splits, settings.aug_seed, settings.epochs, mode)
    for name, value in logits.items():
        save_torch(files[name], value)
        loaded[name] = value
    return teacher, assemble(loaded, settings.epochs, settings.aug_seed, splits)


# ----------------------------------------------------------------------------- Tune experiments


def _base(settings: SweepSettings) -> dict:
    """The RunConfig fields every trial shares (the trial's config adds what varies)."""
    return {k: v for k, v in settings.student_config().to_dict().items() if k not in ("temperature", "alpha", "seed")}


def _tuner_parts(settings: SweepSettings, phase: str):
    """(param_space, search_alg, scheduler, num_samples) of the baseline or sweep experiment."""
    from ray import tune

    seeds = list(range(settings.seeds))
    if phase == "baseline":
        return {"alpha": 0.0, "temperature": 1.0, "seed": tune.grid_search(seeds)}, None, None, 1
    scheduler = None
    if settings.asha:
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="training_iteration", max_t=settings.epochs, grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    if settings.search == "grid":
        space = {k: tune.grid_search(v) for k, v in settings.space.axes.items()}
        return {**settings.space.fixed, **space, "seed": tune.grid_search(seeds)}, None, scheduler, 1
    from kdtune.optuna_search import PruningAwareOptunaSearch, make_sampler

    distributions = {
        k: (tune.loguniform(low, high) if dist == "loguniform" else tune.uniform(low, high))
        for k, (dist, low, high) in settings.space.distributions.items()
    }
    searcher = PruningAwareOptunaSearch(
        metric=METRIC, mode="max", sampler=make_sampler(settings.sampler, settings.search_seed),
        full_epochs=settings.epochs,
    )
    param_space = {**settings.space.fixed, **distributions}
    if settings.seeds > 1:
        from ray.tune.search import Repeater

        # Each Optuna point runs once per seed (seed = the repeat index); Optuna is told their mean.
        searcher = Repeater(searcher, repeat=settings.seeds, set_index=True)
    else:
        param_space["seed"] = 0
    return param_space, searcher, scheduler, settings.num_samples * settings.seeds


def run_phase(phase: str, settings: SweepSettings, resources: Resources, storage: str, splits_ref, cache_ref,
              resume: bool):
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(kd_trainable, base=_base(settings), splits=splits_ref, cache=cache_ref),
        resources.trial_resources,
    )
    path = storage.rstrip("/") + "/" + phase
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if tune.Tuner.can_restore(path):
            raise UserError(f"experiment {path} already exists; add --resume to finish it, or choose another --name")
        param_space, searcher, scheduler, num_samples = _tuner_parts(settings, phase)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                max_concurrent_trials=resources.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=phase, storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=1,
            ),
        )
    return tuner.fit()


def run_sweep(settings: SweepSettings, resources: Resources, root: Path, resume: bool = False) -> dict:
    """Run (or finish) the experiment; return what experiment.json records."""
    import ray

    storage = tune_storage(root, resources)
    check_storage_writable(storage)
    connect(resources.address, resources.runtime_env)
    check_cluster(resources, storage)
    splits = load_splits(settings)
    check_models(settings, splits)
    shared_splits = ray.put(to_shared(splits))
    teacher, cache = prepare_teacher(settings, resources, splits, shared_splits)
    record = {
        "settings": settings.to_dict(),
        "teacher": {"path": str(teacher.path.resolve()), **{k: v for k, v in teacher.meta.items() if k != "history"}},
        "data": splits.summary(),
        "storage": storage,
        "points": sweep_points(settings),
    }
    save_json(root / "experiment.json", record)
    print(f"teacher {settings.teacher}: val {teacher.meta['val_acc']:.2%}  test {teacher.meta['test_acc']:.2%}")
    shared_cache = ray.put(to_shared(cache))
    for phase in ("baseline", "sweep"):
        run_phase(phase, settings, resources, storage, shared_splits, shared_cache, resume)
    return record
