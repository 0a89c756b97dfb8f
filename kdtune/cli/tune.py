"""Sweep distillation temperature and alpha with Ray Tune (grid or Optuna, ASHA, seeds, local or cluster).

    kdtune tune --grid temperature
    kdtune tune --optuna joint --num-samples 40
    kdtune tune --grid temperature --preset quick
    kdtune tune --resume --name <experiment>

Everything that can be checked without Ray (flags, search space, data, models) is checked before Ray
starts; this module imports neither Ray nor Optuna, so `--help` and a refusal are quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from kdtune.cli.args import (
    ArgumentParser,
    given_options,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
    smoothing,
)
from kdtune.engine.config import PRECISIONS
from kdtune.engine.data import DATASETS, resolve_data_dir
from kdtune.engine.losses import DKD_BETA
from kdtune.engine.stack import PACK_MODES
from kdtune.sweep.estimate import dry_run
from kdtune.sweep.interrupt import exit_at_once_on_ctrl_c
from kdtune.sweep.presets import PRESETS, default_preset
from kdtune.sweep.resume import (
    PLACEMENT_OPTIONS,
    absolute,
    check_new_experiment,
    check_resume_options,
    load_record,
    recorded_resources,
    recorded_settings,
    resume_command,
)
from kdtune.sweep.settings import (
    SAMPLERS,
    Resources,
    SweepSettings,
    build_settings,
    default_name,
    experiment_root,
)

# SweepSettings' and Resources' own defaults, shown in --help: the flags default to None, "not given".
SETTING = {f.name: f.default for f in dataclasses.fields(SweepSettings)}
RESOURCE = {f.name: f.default for f in dataclasses.fields(Resources)}


def parse_args(argv):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--grid", metavar="SPACE", help="grid search over the grid section of a built-in space "
                      "(search_spaces/SPACE.yaml) or of a YAML file (--grid path/to/mine.yaml)")
    what.add_argument("--optuna", metavar="SPACE", help="Optuna search over the optuna section of a built-in space "
                      "or of a YAML file")
    p.add_argument("--preset", help=f"defaults any flag overrides: {', '.join(PRESETS)} (default: paper where a GPU "
                   f"is visible, else quick)")
    p.add_argument("--name", help="experiment name: results/NAME (default: SPACE-SEARCH-TIME)")
    p.add_argument("--resume", action="store_true", help="finish the experiment --name after Ctrl-C, a crash or a kill")
    p.add_argument("--dry-run", action="store_true", help="print the trial plan and estimated cost; train nothing")
    p.add_argument("--results-dir", default="results", help="where experiments live (default: results)")
    g = p.add_argument_group("models, data and training (default: the preset's)")
    models = "a registry name, torchvision:NAME, timm:NAME or package.module:callable"
    g.add_argument("--teacher", help=f"teacher model: {models}")
    g.add_argument("--student", help=f"student model: {models}")
    g.add_argument("--recipe")
    g.add_argument("--teacher-recipe")
    g.add_argument("--epochs", type=positive_int, help="student epochs")
    g.add_argument("--lr", type=positive_float, help="student learning rate (default: the recipe's)")
    g.add_argument("--teacher-epochs", type=positive_int)
    g.add_argument("--data-dir", help="CIFAR-10, CIFAR-100 or an image folder (default: $KDTUNE_DATA_DIR, else ./data)")
    g.add_argument("--dataset", choices=DATASETS, help="what --data-dir holds (default: inferred from it)")
    g.add_argument("--image-size", type=positive_int, metavar="S", help="resize every image to S x S when decoding")
    g.add_argument("--train-subset", type=positive_int)
    g.add_argument("--val-size", type=positive_int)
    g.add_argument("--precision", choices=PRECISIONS, help=f"default: {SETTING['precision']}")
    g.add_argument("--test-every", type=non_negative_int, metavar="N",
                   help="also evaluate the test set every N epochs (test curves and the report's best-epoch test "
                        "column); default 0: only after the last epoch")
    g.add_argument("--teacher-store", help="trained teachers and their logit caches (default: results/teachers)")
    g.add_argument("--teacher-path", help="use this teacher checkpoint instead of the store's (it must have been "
                   "trained on the same data splits)")
    g.add_argument("--allow-foreign-teacher", action="store_true",
                   help="accept a --teacher-path trained on other data splits; the report says so")
    g.add_argument("--label-smoothing", type=smoothing,
                   help="label smoothing of every student, distilled or not (default: 0)")
    g.add_argument("--teacher-label-smoothing", type=smoothing,
                   help="label smoothing of the teacher (default: 0; part of its store key)")
    g.add_argument("--ctkd-range", type=positive_float, nargs=2, metavar=("LOW", "HIGH"),
                   help="method ctkd: bounds of the learned temperature (default: 1 21, as Li et al. 2023)")
    g.add_argument("--ctkd-ramp-epochs", type=positive_int, metavar="N",
                   help="method ctkd: epochs over which the gradient reversal ramps up from 0 to 1 (default: the "
                        "paper's 10 of 240 epochs, scaled to --epochs)")
    g.add_argument("--dkd-beta", type=non_negative_float, metavar="BETA",
                   help=f"method dkd: the weight of its non-target term NCKD (default: {DKD_BETA:g}, the authors' CIFAR "
                        f"setting)")
    g.add_argument("--dkd-warmup-epochs", type=positive_int, metavar="N",
                   help="method dkd: epochs over which its KD weight warms up linearly (default: the authors' 20 of "
                        "240 epochs, scaled to --epochs)")
    s = p.add_argument_group("search")
    s.add_argument("--seeds", type=positive_int, help="seeds per configuration (default: 3 for grids, 1 for Optuna)")
    s.add_argument("--num-samples", type=positive_int, help=f"Optuna points (default: {SETTING['num_samples']})")
    s.add_argument("--sampler", choices=SAMPLERS, help=f"Optuna sampler (default: {SETTING['sampler']})")
    s.add_argument("--search-seed", type=int, help=f"seed of the Optuna sampler (default: {SETTING['search_seed']})")
    asha = s.add_mutually_exclusive_group()
    asha.add_argument("--asha", dest="asha", action="store_true", default=None, help="ASHA early stopping (default for --optuna)")
    asha.add_argument("--no-asha", dest="asha", action="store_false", help="no early stopping (default for --grid)")
    s.add_argument("--confirm", type=confirm_seeds, metavar="K|auto",
                   help="re-train the chosen configuration (and up to two tied with it) and the baseline on K fresh seeds "
                        "after the search, or on as many as --target-ci needs (auto); the report's headline gain is "
                        "theirs (default: the preset's: auto for paper, else 0)")
    s.add_argument("--target-ci", type=positive_float, metavar="POINTS",
                   help=f"--confirm auto: the 95%% interval half-width to reach (default: {SETTING['target_ci']:g} points)")
    s.add_argument("--max-confirm-seeds", type=positive_int, metavar="N",
                   help=f"--confirm auto: at most N fresh seeds (default: {SETTING['max_confirm_seeds']})")
    s.add_argument("--confirm-fresh-views", action="store_true",
                   help="re-train them on a new augmentation stream too (a second teacher-logit cache), so that the "
                        "confirmed gain does not depend on the search's views")
    s.add_argument("--grace-period", type=positive_int,
                   help="ASHA: epochs before a trial may be stopped (default: the first epoch after the warm-up)")
    s.add_argument("--reduction-factor", type=positive_int,
                   help=f"ASHA: keep the best 1/N at each rung (N >= 2; default: {SETTING['reduction_factor']})")
    s.add_argument("--max-failures", type=int, help="retries of a crashed trial from its last checkpoint (default: "
                   f"{SETTING['max_failures']})")
    s.add_argument("--pack", type=non_negative_int, metavar="N",
                   help="train N students per trial, of any configurations and the baseline (grid, no ASHA); 0: a "
                        "trial is one configuration's seeds (default: 0, or on GPUs a stacked pack where a short "
                        "measurement finds it faster; docs/sweeps.md#filling-a-gpu)")
    s.add_argument("--pack-mode", choices=PACK_MODES,
                   help="how a trial trains its students: loop (one after another each step, exactly as alone), "
                        "stack (one batched torch.func computation, for GPUs; method kd only), auto (default: each "
                        "packed trial times a few steps of both on its device and takes the faster, remembered per "
                        "device and model)")
    s.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="trials checkpoint every N epochs and after the last; a retried or resumed trial repeats at "
                        "most N - 1 epochs (default: as often as keeps checkpoint writing under about 5%% of training)")
    s.add_argument("--compile", action="store_true",
                   help="the students' forward through torch.compile (on CUDA as CUDA graphs); pack mode loop only. "
                        "Off by default: no faster on the CPUs measured (benchmarks/README.md), not yet measured on "
                        "a GPU")
    s.add_argument("--deterministic", action="store_true",
                   help="on GPUs, deterministic kernels only (cuDNN and torch.use_deterministic_algorithms), so a "
                        "rerun gives the same numbers; slower. CPU runs are reproducible without it")
    r = p.add_argument_group("resources and cluster")
    r.add_argument("--cpus-per-trial", type=positive_float, help=f"default: {RESOURCE['cpus_per_trial']:g}")
    r.add_argument("--gpus-per-trial", type=float,
                   help="fractional: 0.25 puts four trials on a GPU (default: 0 without GPUs; with GPUs, as many "
                        "trials per GPU as a short measurement on one finds worth it)")
    r.add_argument("--max-concurrent", type=positive_int)
    r.add_argument("--address", help="a running Ray cluster ('auto' or host:port; default: $RAY_ADDRESS, else local)")
    r.add_argument("--storage-path", help="where Tune keeps trials: a folder or a URI such as s3://bucket/path")
    r.add_argument("--py-modules", action="append", default=[], metavar="PATH",
                   help="a .py file or package folder of your models, shipped to every Ray node (repeatable)")
    r.add_argument("--working-dir", metavar="DIR",
                   help="a folder shipped to every Ray node as the workers' working directory")
    t = p.add_argument_group("tracking (Tune's own TensorBoard, CSV and JSON logs are always in the experiment folder)")
    t.add_argument("--mlflow", metavar="TRACKING_URI", help="log every trial to MLflow, e.g. sqlite:///abs/mlflow.db "
                   "or http://host:5000 (needs kdtune[mlflow])")
    t.add_argument("--wandb", metavar="PROJECT", help="log every trial to this Weights & Biases project "
                   "(needs kdtune[wandb]; WANDB_MODE=offline logs locally)")
    r.add_argument("--autoscale", action="store_true",
                   help="the cluster starts nodes on demand: accept resources no live node has yet")
    args = p.parse_args(argv)
    args.given = given_options(p, args, argv)
    if not args.resume and not (args.grid or args.optuna):
        p.error("one of --grid SPACE or --optuna SPACE is required (or --resume --name NAME)")
    if args.resume and not args.name:
        p.error("--resume needs --name of the experiment to finish")
    return args


def confirm_seeds(text: str) -> int | str:
    """--confirm: a number of fresh seeds, or "auto"."""
    if text == "auto":
        return text
    try:
        return non_negative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be an integer >= 0 or auto") from None


def settings_from_args(args) -> tuple[SweepSettings, Resources]:
    """A new experiment's settings and resources from the parsed flags, through the one home of defaults
    (`build_settings`, which kdtune.api uses too): a flag not given is None."""
    resources = absolute(Resources(**{k: v for k, v in dict(
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
        address=args.address, storage_path=args.storage_path, teacher_store=args.teacher_store,
        autoscale=args.autoscale, mlflow_uri=args.mlflow, wandb_project=args.wandb,
        py_modules=tuple(args.py_modules), working_dir=args.working_dir).items() if v is not None}))
    resources.import_user_code()  # model specs are checked before any Ray worker imports them
    search, space = ("grid", args.grid) if args.grid else ("optuna", args.optuna)
    preset = args.preset
    if preset is None:
        preset, why = default_preset()
        print(f"preset {preset}: {why}")
    settings = build_settings(
        args.name or default_name(search, space), search, space, preset,
        teacher=args.teacher, student=args.student, recipe=args.recipe, teacher_recipe=args.teacher_recipe,
        epochs=args.epochs, lr=args.lr, teacher_epochs=args.teacher_epochs,
        data_dir=str(resolve_data_dir(args.data_dir).resolve()), train_subset=args.train_subset,
        val_size=args.val_size, precision=args.precision, seeds=args.seeds, num_samples=args.num_samples,
        sampler=args.sampler, search_seed=args.search_seed, asha=args.asha, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, max_failures=args.max_failures, dataset=args.dataset,
        image_size=args.image_size, label_smoothing=args.label_smoothing,
        teacher_label_smoothing=args.teacher_label_smoothing, confirm=args.confirm, target_ci=args.target_ci,
        max_confirm_seeds=args.max_confirm_seeds,
        confirm_fresh_views=args.confirm_fresh_views or None, teacher_path=args.teacher_path,
        test_every=args.test_every, allow_foreign_teacher=args.allow_foreign_teacher or None,
        ctkd_range=tuple(args.ctkd_range) if args.ctkd_range else None, ctkd_ramp_epochs=args.ctkd_ramp_epochs,
        dkd_beta=args.dkd_beta, dkd_warmup_epochs=args.dkd_warmup_epochs, deterministic=args.deterministic or None,
        checkpoint_every=args.checkpoint_every, compile_step=args.compile or None,
        pack=args.pack, pack_mode=args.pack_mode,
    )
    return settings, resources


def main(argv=None) -> int:
    args = parse_args(argv)
    previous = None
    if args.resume:
        root = experiment_root(args.name, args.results_dir)
        previous = load_record(root)
        check_resume_options({dest: getattr(args, dest) for dest in args.given}, previous)
        resources = recorded_resources(previous, {k: getattr(args, k) for k in args.given & set(PLACEMENT_OPTIONS)})
        resources.import_user_code()  # model specs are checked here, before any Ray worker imports them
        settings = recorded_settings(previous)
        print(f"resuming {root} with its saved settings")
    else:
        if args.name and not args.dry_run:
            check_new_experiment(experiment_root(args.name, args.results_dir))  # before the data are read
        settings, resources = settings_from_args(args)
        root = experiment_root(settings.name, args.results_dir)
        if not args.dry_run:
            check_new_experiment(root)
    if args.dry_run:
        print(dry_run(settings, resources))
        return 0
    from kdtune.report.results import write_trial_summary
    from kdtune.sweep.runner import run_sweep

    again = resume_command(root.name, args.results_dir)
    try:
        record = run_sweep(settings, resources, root, previous)
    except KeyboardInterrupt:
        exit_at_once_on_ctrl_c()
        print(f"interrupted at once; finish it with: {again}", file=sys.stderr)
        return 130
    if record["status"] == "interrupted":
        exit_at_once_on_ctrl_c()
    table = write_trial_summary(root, record)
    counts = table["outcome"].value_counts().to_dict()
    print(f"experiment {root} {record['status']}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    print(f"summary: {root / 'summary.csv'}; report: kdtune report {shlex.quote(str(root))}")
    if record["status"] == "interrupted":
        print(f"interrupted; finish it with: {again}", file=sys.stderr)
        return 130
    errored = counts.get("errored", 0)
    return 1 if errored else 0


if __name__ == "__main__":
    run_cli(main)
