"""How hard does each temperature method's KD term pull at the same alpha?  The ratio of the KD term's gradient to
the CE term's (w.r.t. the student's logits, `kdtune.engine.losses.gradient_ratio`), for kd and ls at several T,
on the quick preset's teacher and a student trained without distillation, over the training views.

    python benchmarks/kd_gradient_ratio.py --data-dir ../shared/datasets/cifar10-jpeg

alpha weights the two terms, but a method's KD gradient can be far smaller than another's (ls z-scores the
logits, which shrinks the KD gradient w.r.t. raw logits of a confident student), so equal alphas are not equal
weights.  The script prints each method's ratio (median over batches) and the alpha at which ls pulls toward
the teacher as hard as kd does at --alpha (`matched_alpha`).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from kdtune.engine.config import STUDENT_AUG_SEED, TEACHER_AUG_SEED, RunConfig
from kdtune.engine.data import augmentation_params, load_dataset, make_splits
from kdtune.engine.losses import gradient_ratio, matched_alpha
from kdtune.engine.train import train, training_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="tinycnn")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--json")
    args = parser.parse_args()

    device = torch.device("cpu")
    splits = make_splits(load_dataset(args.data_dir), args.val_size, args.train_subset)
    teacher = train(RunConfig(model=args.teacher, epochs=args.teacher_epochs, recipe="strong",
                              aug_seed=TEACHER_AUG_SEED), splits, device).model.eval()
    student = train(RunConfig(model=args.student, epochs=args.epochs, recipe="strong", aug_seed=STUDENT_AUG_SEED),
                    splits, device).model.eval()
    params = augmentation_params(len(splits.train_labels), STUDENT_AUG_SEED, args.epochs - 1, splits.image_size)
    ratios: dict[str, dict[float, list[float]]] = {m: {t: [] for t in args.temperatures} for m in ("kd", "ls")}
    with torch.no_grad():
        for start in range(0, len(splits.train_labels), 256):
            views = training_views(splits.train_images[start:start + 256], params[start:start + 256], splits)
            s, t = student(views), teacher(views)
            y = splits.train_labels[start:start + 256]
            for method in ratios:
                for temperature in args.temperatures:
                    with torch.enable_grad():
                        ratios[method][temperature].append(gradient_ratio(s, t, y, temperature, method))
    summary = {m: {t: statistics.median(v) for t, v in by_t.items()} for m, by_t in ratios.items()}
    print(f"|dKD|/|dCE| at the student's logits (median over batches): {args.student} after {args.epochs} epochs, "
          f"{args.teacher} after {args.teacher_epochs}")
    print(f"{'T':>6} {'kd':>8} {'ls':>8}   alpha for ls matching kd at alpha {args.alpha:g}")
    for temperature in args.temperatures:
        kd, ls = summary["kd"][temperature], summary["ls"][temperature]
        print(f"{temperature:6g} {kd:8.3f} {ls:8.3f}   {matched_alpha(args.alpha, kd, ls):.4f}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"args": vars(args), "median_ratio": summary}, file, indent=2)


if __name__ == "__main__":
    main()
