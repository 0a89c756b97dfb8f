"""How many epochs a student needs before more stop paying: the same student (no distillation) trained with
several epoch budgets on the same seeds, one after another in one run, on the full training set.

    python benchmarks/student_epochs.py --data-dir ../shared/datasets/cifar10-jpeg --epochs 12 20 30

With a one-cycle schedule every budget ends annealed, so a run's own curve always climbs at its end; whether
the student has levelled off is read across budgets: the final accuracy of a longer budget against a shorter.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kdtune.engine.config import STUDENT_AUG_SEED, RunConfig
from kdtune.engine.data import load_dataset, make_splits
from kdtune.engine.device import device_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--student", default="tinycnn")
    parser.add_argument("--recipe", default="strong")
    parser.add_argument("--epochs", type=int, nargs="+", default=[12, 20, 30])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--json")
    args = parser.parse_args()

    from kdtune.engine.train import train

    device = torch.device("cpu")
    splits = make_splits(load_dataset(args.data_dir), args.val_size)
    rows = []
    for seed in range(args.seeds):
        for epochs in args.epochs:
            config = RunConfig(model=args.student, epochs=epochs, recipe=args.recipe, seed=seed,
                               aug_seed=STUDENT_AUG_SEED, precision=args.precision)
            started = time.perf_counter()
            last = train(config, splits, device).history[-1]
            rows.append({"seed": seed, "epochs": epochs, "val_acc": last["val_acc"], "test_acc": last["test_acc"],
                         "wall_s": time.perf_counter() - started})
            print(f"seed {seed}, {epochs} epochs: val {last['val_acc']:.4f} test {last['test_acc']:.4f} "
                  f"({rows[-1]['wall_s']:.0f} s)", flush=True)
    for epochs in args.epochs:
        mine = [r for r in rows if r["epochs"] == epochs]
        print(f"{epochs:>3} epochs: mean val {sum(r['val_acc'] for r in mine) / len(mine):.4f}, "
              f"test {sum(r['test_acc'] for r in mine) / len(mine):.4f} over {len(mine)} seed(s)")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"student": args.student, "recipe": args.recipe, "precision": args.precision,
                       "device": device_name(device), "threads": torch.get_num_threads(), "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main()
