"""A small temperature sweep the seed's way and kdtune's way, timed side by side in one run.

(a) seed loop: for each T, a fresh process that reloads the data and the teacher
    and distils with the live teacher through a PIL DataLoader (benchmarks/seed_style.py);
(b) kdtune:    scripts/tune.py over the same temperatures (Ray start-up, logit cache,
    the no-distillation baseline trial and per-epoch evaluation all included).

Both start from the same stored teacher (trained once here, untimed) and train the
same student for the same epochs on the same training images.  Prints a table, then
a JSON last line with seed_loop_s, kdtune_s and speedup.

    python benchmarks/sweep_speed.py --data-dir ../shared/datasets/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdtune.config import RunConfig  # noqa: E402
from kdtune.data import load_dataset, make_splits  # noqa: E402
from kdtune.teacher import obtain_teacher  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="an image folder (train/<class>/, test/<class>/)")
    p.add_argument("--temperatures", default="1,2,4,8")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="cnn3")
    p.add_argument("--teacher-epochs", type=int, default=1)
    args = p.parse_args()
    temperatures = [float(t) for t in args.temperatures.split(",")]
    work = Path(tempfile.mkdtemp(prefix="kdtune-sweep-speed-"))
    env = {**os.environ, "KDTUNE_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    os.environ["KDTUNE_CACHE_DIR"] = env["KDTUNE_CACHE_DIR"]

    # The seed's validation split does not exist; kdtune carves 5,000 from train. Give the seed loop
    # the same number of training images kdtune trains on.
    val_size = 5000
    splits = make_splits(load_dataset(args.data_dir), val_size=val_size, train_subset=args.train_subset)
    teacher_config = RunConfig(model=args.teacher, epochs=args.teacher_epochs, recipe="seed")
    teacher = obtain_teacher(teacher_config, splits, torch.device("cpu"), store=work / "teachers")
    print(f"teacher {args.teacher} ready ({teacher.path}); timing {len(temperatures)} temperatures x "
          f"{args.epochs} epochs of {args.student} on {len(splits.train_labels)} images", flush=True)

    started = time.perf_counter()
    for t in temperatures:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seed_style.py"), "--data-dir", args.data_dir,
                        "--teacher-path", str(teacher.path), "--student", args.student, "--temperature", str(t),
                        "--epochs", str(args.epochs), "--train-subset", str(len(splits.train_labels))],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    seed_loop_s = time.perf_counter() - started

    space = work / "spaces"
    space.mkdir()
    (space / "bench.yaml").write_text(f"grid:\n  temperature: {temperatures}\n  alpha: 0.5\n")
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "tune.py"), "--grid", "bench", "--seeds", "1", "--no-asha",
                    "--preset", "quick", "--teacher", args.teacher, "--teacher-recipe", "seed", "--teacher-epochs",
                    str(args.teacher_epochs), "--student", args.student, "--recipe", "seed", "--epochs",
                    str(args.epochs), "--data-dir", args.data_dir, "--train-subset", str(args.train_subset),
                    "--val-size", str(val_size), "--teacher-store", str(work / "teachers"), "--results-dir",
                    str(work / "results"), "--name", "bench"],
                   env={**env, "KDTUNE_SEARCH_SPACES": str(space)}, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    kdtune_s = time.perf_counter() - started

    print(f"{'way':<34}{'wall-clock s':>14}")
    print(f"{'seed loop (process per T)':<34}{seed_loop_s:>14.1f}")
    print(f"{'kdtune (scripts/tune.py)':<34}{kdtune_s:>14.1f}")
    print(f"speedup {seed_loop_s / kdtune_s:.2f}x on {os.cpu_count()} CPUs "
          f"({'cuda' if torch.cuda.is_available() else 'cpu'}); work folder {work}")
    print(json.dumps({"seed_loop_s": round(seed_loop_s, 1), "kdtune_s": round(kdtune_s, 1),
                      "speedup": round(seed_loop_s / kdtune_s, 2), "temperatures": temperatures,
                      "epochs": args.epochs, "train_images": len(splits.train_labels), "teacher": args.teacher,
                      "student": args.student}))


if __name__ == "__main__":
    main()
