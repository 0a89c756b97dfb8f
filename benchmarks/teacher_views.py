"""How much sharper is a teacher on the augmented views it was trained on than on fresh views of the same images?

kdtune's teacher trains on one augmentation stream (`teacher_aug_seed`) and its cached soft targets are computed
on another (the students' `aug_seed`), because a teacher that labels the very views it was fitted to gives soft
targets sharper than it would on views it never saw.  This measures that difference, side by side in one run:
the teacher is trained once, then for each of its training epochs its logits are computed on that epoch's
views of its own stream and of a fresh one, over the same training images.

    python benchmarks/teacher_views.py --data-dir ../shared/datasets/cifar10-jpeg

Prints, per stream, the mean over epochs and images of the maximum softmax probability, the true-class
probability and the accuracy on the views, and the paired difference (trained-on minus fresh) with a 95%
t-interval over epochs; `--json FILE` writes the same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from kdtune.engine.config import RunConfig
from kdtune.engine.data import load_dataset, make_splits
from kdtune.engine.device import device_name
from kdtune.engine.teacher import epoch_logits
from kdtune.engine.train import train


def view_statistics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    p = logits.float().softmax(dim=1)
    return {"max_prob": p.max(dim=1).values.mean().item(),
            "true_prob": p.gather(1, labels[:, None]).mean().item(),
            "accuracy": (p.argmax(dim=1) == labels).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--recipe", default="strong")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--teacher-aug-seed", type=int, default=0)
    parser.add_argument("--fresh-aug-seed", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()

    from scipy import stats

    device = torch.device("cpu")
    splits = make_splits(load_dataset(args.data_dir), args.val_size, args.train_subset)
    config = RunConfig(model=args.teacher, epochs=args.epochs, recipe=args.recipe, aug_seed=args.teacher_aug_seed)
    started = time.perf_counter()
    teacher = train(config, splits, device).model.eval()
    train_s = time.perf_counter() - started
    rows = []
    for epoch in range(args.epochs):
        row = {"epoch": epoch}
        for stream, seed in (("trained_on", args.teacher_aug_seed), ("fresh", args.fresh_aug_seed)):
            logits = epoch_logits(teacher, splits, seed, epoch, device, "fp32")
            row[stream] = view_statistics(logits, splits.train_labels)
        rows.append(row)
    summary = {}
    for key in ("max_prob", "true_prob", "accuracy"):
        diffs = torch.tensor([r["trained_on"][key] - r["fresh"][key] for r in rows], dtype=torch.float64)
        half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std().item() / math.sqrt(len(diffs))
        summary[key] = {"trained_on": sum(r["trained_on"][key] for r in rows) / len(rows),
                        "fresh": sum(r["fresh"][key] for r in rows) / len(rows),
                        "difference": diffs.mean().item(), "ci95": half}
    result = {"teacher": args.teacher, "recipe": args.recipe, "epochs": args.epochs,
              "train_images": len(splits.train_labels), "teacher_train_s": round(train_s, 1),
              "device": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "summary": summary, "per_epoch": rows}
    print(f"teacher {args.teacher} ({args.recipe}, {args.epochs} epochs) on {len(splits.train_labels)} images, "
          f"{result['device']}, {result['threads']} threads")
    print(f"{'':12} {'its own views':>14} {'fresh views':>12} {'difference (95% CI over epochs)':>34}")
    for key, s in summary.items():
        print(f"{key:12} {s['trained_on']:14.4f} {s['fresh']:12.4f}   {s['difference']:+.4f} ± {s['ci95']:.4f}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
