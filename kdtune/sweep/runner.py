"""Running a sweep on Ray: connect, prepare the teacher as a Ray task, run the Tune experiments.

Kept apart from `kdtune.sweep.settings` (settings and plan) so that planning, dry runs
and reports never need a Ray cluster.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch

from kdtune.engine import teacher as teachers
from kdtune.engine.atomic import save_json
from kdtune.engine.data import Splits
from kdtune.engine.errors import UserError, first_line
from kdtune.engine.progress import LogLines, is_terminal
from kdtune.engine.teacher import cache_mode, heavy_part_from_state, model_from_state
from kdtune.report.record import TEACHER_CARD, confirmed_configurations, read_record, storage_child
from kdtune.sweep import gpu_fill
from kdtune.sweep.interrupt import StopRequest
from kdtune.sweep.resume import (
    Claim,
    check_tune_state,
    environment,
    environment_changes,
    kept_by_tune,
    save_record,
    start_record,
    tune_has_run,
)
from kdtune.sweep.schedulers import BaselineKeepingASHA
from kdtune.sweep.searchers import GridPoints
from kdtune.sweep.settings import (
    BASELINE,
    MAX_TIED_CONFIRMED,
    METRIC,
    Resources,
    SweepSettings,
    check_models,
    check_storage_writable,
    describe_plan,
    describe_precision,
    load_splits,
    pack_members,
    plan,
    resolve_precision,
    sweep_points,
    tune_storage,
)
from kdtune.sweep.tracking import tracking_callbacks
from kdtune.sweep.trainable import from_shared, kd_trainable, to_shared, trial_device

# ----------------------------------------------------------------------------- cluster


def connect(address: str | None, runtime_env: dict | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    # No address: a Ray of its own, never whichever cluster was started last on this machine.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if not is_terminal(sys.stderr):
        # The driver reprints workers' lines behind a "(task pid=...)" prefix, in colour unless told not to.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if address not in ("auto", "local"):
        _check_reachable(address)
    try:
        # Workers import kdtune as installed on each node (pip install -e . there too; see README), and the
        # user's model code from `runtime_env` (--py-modules, --working-dir), which Ray ships to every node.
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(f"cannot connect to the Ray cluster at {address!r}: {first_line(error)}") from None


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
    """Refuse, before any work, what no node can run or what trials on other nodes could not save.

    On a cluster that starts nodes on demand (`--autoscale`, or Ray's autoscaler detected) a request
    no live node satisfies yet is accepted with a note: the autoscaler starts a node for it.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_types = autoscaling_node_types()
    scales = resources.autoscale or bool(node_types)
    for kind, wanted in (("CPU", resources.cpus_per_trial), ("GPU", resources.gpus_per_trial)):
        largest = max((n["Resources"].get(kind, 0) for n in nodes), default=0)
        if wanted <= largest:
            continue
        flag = f"{kind.lower()}s-per-trial {wanted:g}"
        if resources.autoscale or any(t.get(kind, 0) >= wanted for t in node_types):
            how = "--autoscale" if resources.autoscale else "Ray's autoscaler"
            print(f"note: {flag} is more than any live node has (largest: {largest:g} {kind}s); "
                  f"trials wait until {how} starts a node that has it")
            continue
        raise UserError(f"{flag} is more than any node has (largest: {largest:g} {kind}s)")
    if (len(nodes) > 1 or scales) and "://" not in storage:
        raise UserError(
            f"storage path {storage} is local to this machine, but the cluster has {len(nodes)} node(s)"
            + (" and starts more on demand" if scales else "") + "; trials on other nodes could not save there: "
            "pass --storage-path with a URI every node reaches (s3://..., gs://..., or "
            "file:///path on a filesystem all nodes mount)"
        )


def place_trials(settings: SweepSettings, resources: Resources, splits: Splits, new: bool):
    """(settings, resources, the GPU-fill choice or None): without --gpus-per-trial, no GPUs on the cluster
    means CPU trials; with GPUs, a new experiment measures how many trials share a GPU (and, for a grid
    without ASHA and no --pack, how many students a trial stacks) in a Ray task on a GPU
    (kdtune.sweep.gpu_fill).  A resume keeps what its record says; a failed measurement, a whole GPU each."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")] + autoscaling_node_types()
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    if new and gpu_fill.wanted(settings, resources, gpus):
        cpus_per_gpu = min(n.get("CPU", 0) / n["GPU"] for n in nodes if n.get("GPU", 0) >= 1)
        print("measuring how many trials fill a GPU (once per device and model; kdtune.engine.fill)")
        settings, resources, choice, line = gpu_fill.place(
            settings, resources, lambda: measure_fill_on_gpu(settings, resources, splits, cpus_per_gpu))
        print(line.strip())
        if choice is not None:
            return settings, resources, choice
    resolved = resources.with_default_gpus(gpus)
    if resources.gpus_per_trial is None and resolved.gpus_per_trial:
        print("trials use a whole GPU each (the cluster has GPUs; --gpus-per-trial 0 for none, 0.25 for four to a GPU)")
    return settings, resolved, None


def measure_fill_on_gpu(settings: SweepSettings, resources: Resources, splits: Splits, cpus_per_gpu: float):
    """gpu_fill.decide in a Ray task holding one GPU (of a node the autoscaler may have to start)."""
    import ray

    task = ray.remote(gpu_fill.decide).options(num_gpus=1, num_cpus=resources.cpus_per_trial)
    try:
        return ray.get(task.remote(settings, resources, gpu_fill.DataShape.of(splits), cpus_per_gpu))
    except ray.exceptions.RayTaskError as error:
        raise error.cause from None


def teacher_task_resources(resources: Resources) -> dict:
    """The teacher and its cache are one job that every trial waits for: a whole GPU when trials use GPUs,
    else every CPU of the largest live node (not one trial's share)."""
    import ray

    if resources.gpus_per_trial:
        return {"num_cpus": resources.cpus_per_trial, "num_gpus": 1}
    cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    return {"num_cpus": max(resources.cpus_per_trial, cpus)}


def autoscaling_node_types() -> list[dict]:
    """{resource: amount} of each node type the cluster may still start; [] for a fixed cluster.

    Read from the cluster config that Ray's autoscaler publishes in the GCS (Ray Train and Ray Data
    read it the same way).  A cluster without one, or whose autoscaler does not publish it, reads as
    fixed: `--autoscale` says otherwise.
    """
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a Ray without this private API: treat as fixed rather than fail the sweep
        return []
    if config is None:
        return []
    return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]


# ----------------------------------------------------------------------------- teacher and cache


def _prepare_remote(config, shared_splits: dict, state: dict | None, names: list, aug_seed: int, mode: str,
                    live: bool, deterministic: bool = False):
    """Ray task: `teacher.heavy_part_from_state` on the device Ray assigned, with the splits of the object store;
    its progress as live bars the driver draws, or (not `live`: the driver's stderr is no terminal) plain lines."""
    if live:
        from ray.experimental.tqdm_ray import tqdm as progress  # bars the driver draws, not a line per update
    else:
        progress = LogLines
    device = trial_device(deterministic)
    splits = from_shared(Splits, shared_splits)
    return heavy_part_from_state(config, splits, state, names, aug_seed, device, mode, progress=progress)


def teacher_for_sweep(settings: SweepSettings, resources: Resources, splits: Splits, shared_ref, mode: str,
                      recorded: str | None = None, aug_seed: int | None = None):
    """The teacher (from the store, or trained as a Ray task) and the complete logit cache for the students.

    `teacher.prepare_teacher` with its heavy part (training, missing cache entries) run as a Ray task with
    `teacher_task_resources`.  `mode` is the cache's precision ("fp32" or "bf16"), whatever device computes
    missing entries.  `recorded` is the checkpoint of the teacher a resumed experiment already used: it must
    be in the store.  `aug_seed`: the views the cache is of (default: the students').
    """
    import ray

    aug_seed = settings.aug_seed if aug_seed is None else aug_seed

    def as_ray_task(config, model, names: list):
        if model is None:
            print(f"training teacher {config.model} ({config.recipe}, {config.epochs} epochs) as a Ray task")
        else:
            print(f"computing {len(names)} missing teacher-logit cache entries as a Ray task")
        task = ray.remote(_prepare_remote).options(**teacher_task_resources(resources))
        state = None if model is None else model.state_dict()
        new_state, meta, logits = ray.get(task.remote(config, shared_ref, state, names, aug_seed, mode,
                                                      is_terminal(sys.stderr), settings.deterministic))
        trained = None if new_state is None else model_from_state(config, splits.num_classes, new_state)
        return trained, meta, logits

    return teachers.prepare_teacher(
        settings.teacher_config(), splits, resources.teacher_store, aug_seed, settings.epochs, mode,
        teacher_path=settings.teacher_path, allow_foreign=settings.allow_foreign_teacher, recorded=recorded,
        run_heavy=as_ray_task)


# ----------------------------------------------------------------------------- Tune experiments


def _base(settings: SweepSettings, phase: str) -> dict:
    """The RunConfig fields every trial of the phase shares (the trial's config adds what varies)."""
    base = {k: v for k, v in settings.student_config().to_dict().items() if k not in ("temperature", "alpha", "seed")}
    return {**base, "aug_seed": settings.confirm_aug_seed} if phase == "confirm" else base


def _tuner_parts(settings: SweepSettings, phase: str, chosen: dict | None = None):
    """(param_space, search_alg, scheduler, num_samples) of the baseline, sweep or confirm experiment.

    A trial is a pack of every seed of one configuration (`seeds` in its config, see kdtune.sweep.trainable):
    ASHA stops configurations, never single seeds, and Optuna is told one value per point.  The sweep's
    first trial is the baseline's pack, kept from ASHA and Optuna
    (kdtune.sweep.schedulers)."""
    from ray import tune

    seeds = list(range(settings.seeds))
    if phase == "confirm":
        # The baseline and the chosen configuration (and those tied with it), paired on fresh seeds; no early
        # stopping.  The baseline's point names no phase: its trial belongs to the confirmation.
        points = [{k: v for k, v in BASELINE.items() if k != "phase"}, *confirmed_configurations(chosen)]
        return {"seeds": list(chosen["seeds"])}, GridPoints(points), None, len(points)
    if settings.pack:
        return {"members": tune.grid_search(pack_members(settings))}, None, None, 1
    baseline = [BASELINE]
    scheduler = None
    if settings.asha:
        scheduler = BaselineKeepingASHA(
            time_attr="training_iteration", max_t=settings.epochs, grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    if settings.search == "grid":
        points = baseline + sweep_points(settings)
        return {**settings.space.fixed, "seeds": seeds}, GridPoints(points), scheduler, len(points)
    from kdtune.sweep.searchers import PruningAwareOptunaSearch, make_sampler

    distributions = {k: _tune_distribution(spec) for k, spec in settings.space.distributions.items()}
    searcher = PruningAwareOptunaSearch(
        metric=METRIC, mode="max", sampler=make_sampler(settings.sampler, settings.search_seed),
        full_epochs=settings.epochs, baseline=BASELINE,
    )
    return ({**settings.space.fixed, **distributions, "seeds": seeds}, searcher, scheduler,
            settings.num_samples + len(baseline))


def _tune_distribution(spec):
    from ray import tune

    if spec[0] == "categorical":
        return tune.choice(list(spec[1]))
    dist, low, high = spec
    return tune.loguniform(low, high) if dist == "loguniform" else tune.uniform(low, high)


def phase_epochs(settings: SweepSettings, phase: str, chosen: dict | None = None) -> int:
    """The most epochs the phase's Tune trials can report (ASHA may stop some early); a trial is a pack.  The
    confirmation has a trial for the baseline and for each configuration it re-measures (`chosen`)."""
    if phase == "confirm" and chosen:
        return (1 + len(confirmed_configurations(chosen))) * settings.epochs
    return plan(settings)["tune_trials"][phase] * settings.epochs


def run_phase(phase: str, settings: SweepSettings, resources: Resources, storage: str, splits_ref, cache_ref,
              resume: bool, chosen: dict | None = None):
    """The phase's Tuner, restored from its state when resuming."""
    from ray import tune

    from kdtune.sweep.progress import SweepProgress

    trainable = tune.with_resources(
        tune.with_parameters(kd_trainable, base=_base(settings, phase), splits=splits_ref, cache=cache_ref,
                             test_every=settings.test_every, pack_mode=settings.pack_mode,
                             deterministic=settings.deterministic, checkpoint_every=settings.checkpoint_every,
                             compiled=settings.compile_step),
        resources.trial_resources,
    )
    path = storage_child(storage, phase)
    if resume and tune.Tuner.can_restore(path) and tune_has_run(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if not resume and tune.Tuner.can_restore(path):
            raise UserError(f"experiment {path} already exists; add --resume to finish it, or choose another --name")
        param_space, searcher, scheduler, num_samples = _tuner_parts(settings, phase, chosen)
        concurrent = resources.max_concurrent
        if concurrent is None and isinstance(searcher, GridPoints):
            # Tune starts the workers of a searcher's trials one at a time unless a concurrency limit says how
            # many may run: a grid has no reason to wait, so as many as it has trials (as for Tune's own grid).
            concurrent = num_samples
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                max_concurrent_trials=concurrent,
            ),
            run_config=tune.RunConfig(
                name=phase, storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[SweepProgress(phase, phase_epochs(settings, phase, chosen), settings.epochs),
                           *tracking_callbacks(resources.mlflow_uri, resources.wandb_project, settings.name, phase)],
                verbose=0,  # SweepProgress prints instead: a bar and a line per trial, not ~30 lines per trial
            ),
        )
    return tuner


def choose_for_confirmation(settings: SweepSettings, record: dict) -> dict | None:
    """The search's chosen configuration, by the report's own rule (complete, the most correct validation images,
    ties broken by the fixed rule), the others tied with it (up to MAX_TIED_CONFIRMED in all), and the fresh
    seeds they are re-measured on: --confirm K, or with auto as many as the chosen one's paired spread says
    give a 95% interval of ±target_ci points."""
    from kdtune.report.results import trial_table
    from kdtune.report.stats import config_table, planned_seeds, seeds_for_interval, tied

    configs = config_table(trial_table(record), planned_seeds(settings.seeds), record.get("data"))
    best = tied(configs).head(MAX_TIED_CONFIRMED).to_dict("records")
    if not best:
        return None
    chosen = {"temperature": float(best[0]["temperature"]), "alpha": float(best[0]["alpha"]),
              "method": str(best[0]["method"]), "search_val_acc": float(best[0]["val_acc_mean"]),
              "configurations": [{"alpha": float(row["alpha"]), "temperature": float(row["temperature"]),
                                  "method": str(row["method"])} for row in best]}
    count = settings.confirm
    if count == "auto":
        sd = float(best[0]["gain_sd"])
        count, reached = seeds_for_interval(sd, settings.target_ci / 100, settings.max_confirm_seeds)
        chosen["sizing"] = {"paired_sd": sd, "from_pairs": int(best[0]["gain_pairs"]),
                            "target_ci": settings.target_ci, "seeds": count, "reached": reached}
    return {**chosen, "seeds": settings.confirm_seeds(count)}


def confirm_choice(settings: SweepSettings, record: dict, root: Path) -> bool:
    """Whether a confirmation phase runs; its choice is made once, recorded, and kept by a resume."""
    if not settings.confirm:
        return False
    if record.get("confirm") is None:
        record["confirm"] = choose_for_confirmation(settings, record)
        save_record(root, record)
    chosen = record["confirm"]
    if chosen is None:
        print("confirmation skipped: no search configuration finished all its seeds")
        return False
    points = "; ".join(("" if c["method"] == "kd" else c["method"] + ", ") + f"T = {c['temperature']:g}, "
                       f"alpha = {c['alpha']:g}" for c in confirmed_configurations(chosen))
    sizing = chosen.get("sizing")
    why = "" if sizing is None else (
        f" (the search's paired SD {100 * sizing['paired_sd']:.2f} points from {sizing['from_pairs']} pairs: "
        + (f"enough for a 95% interval of ±{sizing['target_ci']:g} points)" if sizing["reached"] else
           f"±{sizing['target_ci']:g} points would need more than --max-confirm-seeds {sizing['seeds']})"))
    print(f"confirming {points} against the baseline on {len(chosen['seeds'])} fresh seeds {chosen['seeds']}{why}")
    return True


def run_sweep(settings: SweepSettings, resources: Resources, root: Path, previous: dict | None = None) -> dict:
    """Run the experiment, or finish the one whose experiment.json is `previous`; return its final record.

    The record is written before any training, so a run stopped once training started (Ctrl-C, a
    crash, a kill) can always be resumed, and a run refused before leaves no folder behind.  Ctrl-C
    stops it before its next phase: the record's status is then "interrupted".  A new experiment first
    claims its name (`Claim`): of two started at once with one name, the second is refused untouched.
    """
    claim = None if previous is not None else Claim(root)
    try:
        return _run(settings, resources, root, previous)
    except UserError:
        if claim is not None and not _recorded(root, "phases_started"):
            claim.release()  # refused before any trial: a new experiment leaves nothing behind
        raise
    except KeyboardInterrupt:
        if claim is not None and not _recorded(root, "settings"):
            claim.release()  # stopped before its record was written: nothing to resume
        raise


def _recorded(root: Path, key: str) -> bool:
    """Whether the experiment's record holds a non-empty `key` (a claim's placeholder holds neither)."""
    try:
        return bool(read_record(root).get(key))
    except UserError:
        return False


def _run(settings: SweepSettings, resources: Resources, root: Path, previous: dict | None) -> dict:
    import ray

    storage = tune_storage(root, resources)
    check_storage_writable(storage)
    if previous is not None:
        check_tune_state(storage, previous.get("phases_started", []))
    splits = load_splits(settings)  # bad data or models are refused before Ray starts
    check_models(settings, splits)
    if previous is None:
        print(describe_plan(settings, len(splits.train_labels), teacher_stored=None))
    connect(resources.address, resources.runtime_env)
    settings, resources, fill = place_trials(settings, resources, splits, previous is None)
    check_cluster(resources, storage)
    shared_splits = ray.put(to_shared(splits))
    choices = {}
    if resources.gpus_per_trial == 0:  # CPU trials: what --precision auto means, measured for each model here
        settings, choices = resolve_precision(settings, splits, max(1, int(resources.cpus_per_trial)),
                                              os.cpu_count() or 1)
        if choices:
            print(describe_precision(choices).strip())
    mode = previous["cache_mode"] if previous and "cache_mode" in previous else cache_mode(
        settings.precision_of("cache"), torch.device("cuda" if resources.gpus_per_trial > 0 else "cpu"))
    record = start_record(previous, settings, resources, storage, mode)
    if choices:
        record["precision_choice"] = choices
    if fill is not None:
        record["gpu_fill"] = fill.to_dict()
    if previous is not None and "environment" in previous:
        changed = environment_changes(previous["environment"], environment(settings, resources, mode))
        if changed:
            print(f"note: this resume runs on another environment than the experiment started on: {'; '.join(changed)}; "
                  f"a seed's numbers may differ from those it would have given there")
    record.update(data=splits.summary(), points=sweep_points(settings), students=settings.students_record())
    with StopRequest() as stop:
        save_record(root, record)
        try:
            teacher, cache = teacher_for_sweep(settings, resources, splits, shared_splits, mode,
                                               recorded=(record.get("teacher") or {}).get("path"))
            record["teacher"] = {"path": str(teacher.path.resolve()),
                                 **{k: v for k, v in teacher.meta.items() if k != "history"}}
            save_record(root, record)
            if "foreign_data" in teacher.meta:
                print(f"warning: teacher {teacher.path} was not trained on this experiment's data splits "
                      f"(--allow-foreign-teacher): it may have seen validation or test images")
            print(f"teacher {settings.teacher}: val {teacher.meta['val_acc']:.2%}  test {teacher.meta['test_acc']:.2%}")
            if not (root / TEACHER_CARD).is_file():  # a resume has the same teacher and views: its card stands
                swept = [p["temperature"] for p in record["points"] if isinstance(p.get("temperature"), (int, float))]
                save_json(root / TEACHER_CARD, teachers.teacher_card(teacher, cache, splits, swept))
            shared_cache = ray.put(to_shared(cache))
            for phase in ("sweep", "confirm"):
                if stop.requested:
                    break
                if phase == "confirm" and not confirm_choice(settings, record, root):
                    break
                if phase == "confirm" and settings.confirm_aug_seed != settings.aug_seed:
                    _, fresh = teacher_for_sweep(settings, resources, splits, shared_splits, mode,
                                                 recorded=record["teacher"]["path"], aug_seed=settings.confirm_aug_seed)
                    shared_cache = ray.put(to_shared(fresh))
                tuner = run_phase(phase, settings, resources, storage, shared_splits, shared_cache,
                                  resume=previous is not None, chosen=record.get("confirm"))
                kept = kept_by_tune(previous, resources) if phase in (previous or {}).get("phases_started", []) else []
                if kept:
                    print(f"note: the {phase} phase resumes with the trial resources it started with; "
                          f"{', '.join(kept)} apply to phases not started yet")
                if phase not in record["phases_started"]:
                    record["phases_started"].append(phase)
                    save_record(root, record)
                stop.run_tune(tuner.fit)
        except KeyboardInterrupt:
            record["status"] = "interrupted"
            save_record(root, record)
            raise
    record["status"] = "interrupted" if stop.requested else "finished"
    save_record(root, record)
    return record
