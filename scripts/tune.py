"""Sweep distillation temperature and alpha with Ray Tune (grid or Optuna, ASHA, seeds, local or cluster).

    python scripts/tune.py --grid temperature
    python scripts/tune.py --optuna joint --num-samples 40
    python scripts/tune.py --grid temperature --preset quick
    python scripts/tune.py --resume --name <experiment>
"""

from __future__ import annotations

from kdtune.cli import ArgumentParser, positive_float, positive_int, run_cli
from kdtune.config import PRECISIONS
from kdtune.data import DATASETS, resolve_data_dir
from kdtune.errors import UsageError
from kdtune.optuna_search import SAMPLERS
from kdtune.presets import PRESETS
from kdtune.sweep import (Resources, build_settings, default_name, dry_run, experiment_root, load_settings)


def parse_args(argv):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--grid", metavar="SPACE", help="grid search over search_spaces/SPACE.yaml's grid section")
    what.add_argument("--optuna", metavar="SPACE", help="Optuna search over search_spaces/SPACE.yaml's optuna section")
    p.add_argument("--preset", default="paper", help=f"defaults any flag overrides: {', '.join(PRESETS)} (default: paper)")
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
    g.add_argument("--precision", choices=PRECISIONS, default="auto")
    g.add_argument("--teacher-store", help="trained teachers and their logit caches (default: results/teachers)")
    s = p.add_argument_group("search")
    s.add_argument("--seeds", type=positive_int, help="seeds per configuration (default: 3 for grids, 1 for Optuna)")
    s.add_argument("--num-samples", type=positive_int, default=20, help="Optuna points (default: 20)")
    s.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler (default: tpe, multivariate)")
    s.add_argument("--search-seed", type=int, default=0, help="seed of the Optuna sampler")
    asha = s.add_mutually_exclusive_group()
    asha.add_argument("--asha", dest="asha", action="store_true", default=None, help="ASHA early stopping (default for --optuna)")
    asha.add_argument("--no-asha", dest="asha", action="store_false", help="no early stopping (default for --grid)")
    s.add_argument("--grace-period", type=positive_int, default=2, help="ASHA: epochs before a trial may be stopped")
    s.add_argument("--reduction-factor", type=positive_int, default=3, help="ASHA: keep the best 1/N at each rung (N >= 2)")
    s.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from its last checkpoint")
    r = p.add_argument_group("resources and cluster")
    r.add_argument("--cpus-per-trial", type=positive_float, default=1.0)
    r.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractional: 0.25 puts four trials on a GPU")
    r.add_argument("--max-concurrent", type=positive_int)
    r.add_argument("--address", help="a running Ray cluster ('auto' or host:port; default: $RAY_ADDRESS, else local)")
    r.add_argument("--storage-path", help="where Tune keeps trials: a folder or a URI such as s3://bucket/path")
    r.add_argument("--py-modules", action="append", default=[], metavar="PATH",
                   help="a .py file or package folder of your models, shipped to every Ray node (repeatable)")
    r.add_argument("--working-dir", metavar="DIR",
                   help="a folder shipped to every Ray node as the workers' working directory")
    args = p.parse_args(argv)
    if not args.resume and not (args.grid or args.optuna):
        p.error("one of --grid SPACE or --optuna SPACE is required (or --resume --name NAME)")
    if args.resume and not args.name:
        p.error("--resume needs --name of the experiment to finish")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    resources = Resources(
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
        address=args.address, storage_path=args.storage_path, teacher_store=args.teacher_store,
        py_modules=tuple(args.py_modules), working_dir=args.working_dir,
    )
    resources.import_user_code()  # model specs are checked here, before any Ray worker imports them
    if args.resume:
        root = experiment_root(args.name, args.results_dir)
        settings = load_settings(root)
        print(f"resuming {root} with its saved settings")
    else:
        search, space = ("grid", args.grid) if args.grid else ("optuna", args.optuna)
        name = args.name or default_name(search, space)
        root = experiment_root(name, args.results_dir)
        if (root / "experiment.json").exists() and not args.dry_run:
            raise UsageError(f"experiment {root} already exists; add --resume to finish it, or choose another --name")
        settings = build_settings(
            name, search, space, args.preset,
            teacher=args.teacher, student=args.student, recipe=args.recipe, teacher_recipe=args.teacher_recipe,
            epochs=args.epochs, lr=args.lr, teacher_epochs=args.teacher_epochs, data_dir=str(resolve_data_dir(args.data_dir)),
            dataset=args.dataset, image_size=args.image_size,
            train_subset=args.train_subset, val_size=args.val_size, precision=args.precision,
            seeds=args.seeds or (3 if search == "grid" else 1), num_samples=args.num_samples, sampler=args.sampler,
            search_seed=args.search_seed, asha=search == "optuna" if args.asha is None else args.asha,
            grace_period=args.grace_period, reduction_factor=args.reduction_factor, max_failures=args.max_failures,
        )
    if args.dry_run:
        print(dry_run(settings, resources))
        return 0
    from kdtune.ray_sweep import run_sweep
    from kdtune.results import write_trial_summary

    record = run_sweep(settings, resources, root, resume=args.resume)
    table = write_trial_summary(root, record)
    counts = table["outcome"].value_counts().to_dict()
    print(f"experiment {root}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    print(f"summary: {root / 'summary.csv'}; report: python scripts/report.py {root}")
    errored = counts.get("errored", 0)
    return 1 if errored else 0


if __name__ == "__main__":
    run_cli(main)
