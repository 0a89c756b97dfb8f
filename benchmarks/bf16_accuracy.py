"""Does bf16 cost accuracy?  The same student trained in fp32 and in bf16 autocast on the same seeds, side by side
in one run, on the full training set; the paired difference in test accuracy with kdtune's own statistics, and
the speed ratio of the two.

    python benchmarks/bf16_accuracy.py --data-dir ../shared/datasets/cifar10-jpeg --seeds 5 --epochs 3

Each seed's fp32 and bf16 runs share initialisation, data order and augmentation, so their difference is paired
(`kdtune.report.stats.paired_gain`: mean, 95% t-interval, paired t-test; and the exact sign-flip p).
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

from kdtune.engine.config import STUDENT_AUG_SEED, RunConfig
from kdtune.engine.data import load_dataset, make_splits
from kdtune.engine.device import device_name, native_bf16
from kdtune.engine.train import train
from kdtune.report.stats import paired_gain, sign_flip_p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--student", default="tinycnn")
    parser.add_argument("--recipe", default="strong")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--json")
    args = parser.parse_args()

    device = torch.device("cpu")
    splits = make_splits(load_dataset(args.data_dir), args.val_size)
    rows = []
    for seed in range(args.seeds):
        for precision in ("fp32", "bf16"):  # side by side: each seed's pair runs back to back
            config = RunConfig(model=args.student, epochs=args.epochs, recipe=args.recipe, seed=seed,
                               aug_seed=STUDENT_AUG_SEED, precision=precision)
            started = time.perf_counter()
            result = train(config, splits, device)
            wall = time.perf_counter() - started
            last = result.history[-1]
            rows.append({"seed": seed, "precision": precision, "test_acc": last["test_acc"], "val_acc": last["val_acc"],
                         "train_images_per_s": sum(h["images_per_s"] for h in result.history) / len(result.history),
                         "wall_s": wall})
            print(f"seed {seed} {precision}: val {last['val_acc']:.4f} test {last['test_acc']:.4f} "
                  f"{rows[-1]['train_images_per_s']:.0f} img/s, {wall:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    by = {p: table[table["precision"] == p].set_index("seed") for p in ("fp32", "bf16")}
    gain = paired_gain(by["bf16"]["test_acc"], by["fp32"]["test_acc"])
    differences = (by["bf16"]["test_acc"] - by["fp32"]["test_acc"]).tolist()
    speed = by["bf16"]["train_images_per_s"].mean() / by["fp32"]["train_images_per_s"].mean()
    wall = by["bf16"]["wall_s"].sum() / by["fp32"]["wall_s"].sum()
    summary = {"student": args.student, "recipe": args.recipe, "epochs": args.epochs, "seeds": args.seeds,
               "train_images": len(splits.train_labels), "device": device_name(device), "native_bf16": native_bf16(device),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "test_acc_fp32": by["fp32"]["test_acc"].mean(), "test_acc_bf16": by["bf16"]["test_acc"].mean(),
               "paired_difference": gain.mean, "ci95": gain.ci95, "p_paired": gain.p,
               "p_signflip": sign_flip_p(differences), "train_speed_ratio": speed, "wall_ratio": wall, "rows": rows}
    print(f"bf16 - fp32 test accuracy, paired over {args.seeds} seeds: {100 * gain.mean:+.2f} points "
          f"(95% CI {100 * (gain.mean - gain.ci95):+.2f} to {100 * (gain.mean + gain.ci95):+.2f}; t-test p {gain.p:.3g}, "
          f"sign-flip p {summary['p_signflip']:.3g}); training images/s bf16/fp32 {speed:.2f}x, wall {wall:.2f}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=2, default=float)


if __name__ == "__main__":
    main()
