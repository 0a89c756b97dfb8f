"""Train a teacher, a student, or a distilled student (the seed project's three modes).

    kdtune train --mode teacher --epochs 20
    kdtune train --mode student --epochs 20
    kdtune train --mode distill --temperature 4 --alpha 0.3 --epochs 20
    kdtune train --mode distill --method ctkd --temperature 4 --alpha 0.9 --epochs 20
"""

from __future__ import annotations

from kdtune.cli.args import (
    ArgumentParser,
    non_negative_float,
    positive_float,
    positive_int,
    run_cli,
    smoothing,
    unit_float,
)
from kdtune.cli.single_run import MODES, run_mode
from kdtune.engine.config import CTKD_RANGE, PRECISIONS, STUDENT_AUG_SEED, TEACHER_AUG_SEED, RunConfig
from kdtune.engine.data import DATASETS, resolve_data_dir
from kdtune.engine.losses import DKD_BETA, METHODS


def parse_args(argv):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--epochs", type=positive_int, default=20, help="student epochs (and teacher epochs unless --teacher-epochs)")
    p.add_argument("--temperature", type=positive_float, default=4.0, help="distillation temperature T > 0")
    p.add_argument("--alpha", type=unit_float, default=0.3, help="weight of the KD term in [0, 1]; 1 - alpha weights CE")
    p.add_argument("--method", choices=METHODS, default="kd",
                   help="kd: fixed T; ls: standardised logits over base T; ctkd: T learned from --temperature; dkd: "
                        "decoupled KD; kd-shuffled, kd-uniform: control teachers (default: kd)")
    p.add_argument("--ctkd-range", type=positive_float, nargs=2, metavar=("LOW", "HIGH"), default=list(CTKD_RANGE),
                   help="method ctkd: bounds of the learned temperature (default: 1 21)")
    p.add_argument("--ctkd-ramp-epochs", type=positive_int, metavar="N",
                   help="method ctkd: epochs of the gradient reversal's ramp (default: 10/240 of --epochs, at least 1)")
    p.add_argument("--dkd-beta", type=non_negative_float, default=DKD_BETA, metavar="BETA",
                   help=f"method dkd: the weight of NCKD (default: {DKD_BETA:g})")
    p.add_argument("--dkd-warmup-epochs", type=positive_int, metavar="N",
                   help="method dkd: epochs of the KD weight's warm-up (default: 20/240 of --epochs, at least 1)")
    models = "a registry name, torchvision:NAME, timm:NAME or package.module:callable"
    p.add_argument("--teacher", default="resnet18", help=f"teacher model: {models} (default: resnet18)")
    p.add_argument("--student", default="cnn3", help=f"student model: {models} (default: cnn3)")
    p.add_argument("--teacher-path", help="teacher checkpoint: loaded if it exists (it must have been trained on "
                   "the same data splits), else trained and saved there")
    p.add_argument("--allow-foreign-teacher", action="store_true",
                   help="use a --teacher-path trained on other data splits (it may have seen validation images)")
    p.add_argument("--teacher-store", help="where trained teachers are kept (default: results/teachers)")
    p.add_argument("--teacher-epochs", type=positive_int, help="teacher epochs (default: --epochs)")
    p.add_argument("--teacher-recipe", help="teacher recipe (default: --recipe)")
    p.add_argument("--data-dir", help="CIFAR-10, CIFAR-100 or an image folder (default: $KDTUNE_DATA_DIR, else ./data)")
    p.add_argument("--dataset", choices=DATASETS, help="what --data-dir holds (default: inferred from it)")
    p.add_argument("--image-size", type=positive_int, metavar="S", help="resize every image to S x S when decoding")
    p.add_argument("--train-subset", type=positive_int, help="train on a stratified subset of N images")
    p.add_argument("--val-size", type=positive_int, default=5000, help="validation images carved from train")
    p.add_argument("--seed", type=int, default=0, help="student seed: init, data order, dropout")
    p.add_argument("--aug-seed", type=int, help="seed of the trained model's augmented views, shared with the logit "
                   f"cache (default: {STUDENT_AUG_SEED} for a student, --teacher-aug-seed for --mode teacher)")
    p.add_argument("--teacher-aug-seed", type=int, default=TEACHER_AUG_SEED,
                   help=f"seed of the teacher's augmented views (default: {TEACHER_AUG_SEED}; part of its store key): "
                        f"a teacher should not label the views it trained on")
    p.add_argument("--recipe", default="seed", help="seed (Adam + StepLR), strong (SGD + one-cycle) or cosine")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: the recipe's)")
    p.add_argument("--label-smoothing", type=smoothing, default=0.0,
                   help="label smoothing of the trained model, in [0, 1) (default: 0)")
    p.add_argument("--teacher-label-smoothing", type=smoothing, default=0.0,
                   help="label smoothing of the teacher, in [0, 1) (default: 0; part of its store key)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default) = bf16 on a GPU with native bf16 (Ampere or later); on a CPU, bf16 where "
                        "it is native and measured faster for the model; else fp32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", action="store_true",
                   help="the trained model's forward through torch.compile (on CUDA as CUDA graphs)")
    p.add_argument("--deterministic", action="store_true",
                   help="on a GPU, deterministic kernels only, so a rerun gives the same numbers (slower)")
    p.add_argument("--no-cache", action="store_true", help="run the live teacher every step instead of cached logits")
    p.add_argument("--output", help="run JSON (default: results/runs/<mode>-<time>.json, never an earlier run's); "
                   ".png and .pt beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's --output (.json, .pt and .png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    student_model = args.teacher if args.mode == "teacher" else args.student
    aug_seed = args.aug_seed if args.aug_seed is not None else (
        args.teacher_aug_seed if args.mode == "teacher" else STUDENT_AUG_SEED)
    student = RunConfig(
        model=student_model, epochs=args.epochs, recipe=args.recipe, temperature=args.temperature,
        alpha=args.alpha, seed=args.seed, aug_seed=aug_seed, lr=args.lr, batch_size=args.batch_size,
        method=args.method, ctkd_range=tuple(args.ctkd_range), ctkd_ramp_epochs=args.ctkd_ramp_epochs,
        dkd_beta=args.dkd_beta, dkd_warmup_epochs=args.dkd_warmup_epochs,
        precision=args.precision,
        label_smoothing=args.teacher_label_smoothing if args.mode == "teacher" else args.label_smoothing,
    )
    teacher = RunConfig(
        model=args.teacher, epochs=args.teacher_epochs or args.epochs, recipe=args.teacher_recipe or args.recipe,
        precision=args.precision, label_smoothing=args.teacher_label_smoothing, aug_seed=args.teacher_aug_seed,
        **({"lr": args.lr, "batch_size": args.batch_size} if args.mode == "teacher" else {}),
    )
    run_mode(
        args.mode, student, teacher, resolve_data_dir(args.data_dir), dataset=args.dataset,
        image_size=args.image_size, val_size=args.val_size,
        train_subset=args.train_subset, device=args.device, teacher_path=args.teacher_path,
        teacher_store=args.teacher_store, use_cache=not args.no_cache, output=args.output,
        progress=not args.no_progress, allow_foreign_teacher=args.allow_foreign_teacher, overwrite=args.overwrite,
        deterministic=args.deterministic, compiled=args.compile,
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
