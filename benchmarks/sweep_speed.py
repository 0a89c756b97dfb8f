"""A small temperature sweep the seed's way and kdtune's way, timed side by side in one run.

(a) seed loop: for each T, a fresh process that reloads the data and the teacher
    and distils with the live teacher through a PIL DataLoader (benchmarks/seed_style.py);
(b) kdtune:    scripts/tune.py over the same temperatures (Ray start-up, logit cache,
    the no-distillation baseline trial and per-epoch evaluation all included).

Both start from the same stored teacher (trained once here, untimed) and train the
same student for the same epochs on the same training images.  Prints a table, then
a JSON last line with seed_loop_s, kdtune_s and speedup.

    python benchmarks/sweep_speed.py --data-dir ../shared/datasets/cifar10-jpeg

With --preset, it instead times the command a new user types,

    python scripts/tune.py --grid temperature --preset P --seeds K --data-dir DIR

from an empty teacher store, and asks how much of that wall clock was learning: `floor_s` is the
training-step time measured inside the same run — the teacher's training steps, its logit cache, and
every student's training steps divided by the parallel slots they shared — and `wall_over_floor` is
wall_s / floor_s (1.0 would be nothing but training).  `--dry-run`'s estimate for the same command,
made first, is printed beside it (`estimate_s`, `estimate_error`).

    python benchmarks/sweep_speed.py --preset quick --seeds 3 --data-dir ../shared/datasets/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdtune.engine.config import RunConfig  # noqa: E402
from kdtune.engine.data import load_dataset, make_splits  # noqa: E402
from kdtune.engine.teacher import obtain_teacher  # noqa: E402
from kdtune.sweep.estimate import slots_here  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="an image folder (train/<class>/, test/<class>/)")
    p.add_argument("--temperatures", default="1,2,4,8")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="cnn3")
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--preset", help="time `scripts/tune.py --grid temperature --preset PRESET` instead (see above)")
    p.add_argument("--seeds", type=int, default=3, help="with --preset: seeds per configuration")
    args = p.parse_args()
    if args.preset:
        return time_user_command(args)
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


def time_user_command(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="kdtune-sweep-speed-"))
    env = {**os.environ, "KDTUNE_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "scripts" / "tune.py"), "--grid", "temperature", "--preset", args.preset,
               "--seeds", str(args.seeds), "--data-dir", args.data_dir, "--name", "bench",
               "--results-dir", str(work / "results"), "--teacher-store", str(work / "teachers")]
    dry = subprocess.run([*command, "--dry-run"], env=env, capture_output=True, text=True, check=True)
    estimate_s = float(re.search(r"estimated wall clock on this machine: [\d.]+ min = (\d+) s", dry.stdout).group(1))
    print(f"dry run: {estimate_s:.0f} s estimated; timing {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall_s = time.perf_counter() - started

    root = work / "results" / "bench"
    record = json.loads((root / "experiment.json").read_text())
    n_train = record["data"]["train"]
    meta = json.loads((Path(record["teacher"]["path"]).parent / "meta.json").read_text())
    teacher_s = sum(n_train / epoch["images_per_s"] for epoch in meta["history"])
    cache_s = meta["cache_seconds"]
    student_s = sum(n_train / epoch["images_per_s"] for epoch in student_epochs(root))
    resources = record["resources"]
    slots = slots_here(resources["cpus_per_trial"], resources["gpus_per_trial"] or 0.0, resources["max_concurrent"],
                       os.cpu_count() or 1, torch.cuda.device_count())
    floor_s = teacher_s + cache_s + student_s / slots
    figures = {"wall_s": round(wall_s, 1), "floor_s": round(floor_s, 1), "wall_over_floor": round(wall_s / floor_s, 2),
               "estimate_s": estimate_s, "estimate_error": round(estimate_s / wall_s - 1, 3),
               "teacher_train_s": round(teacher_s, 1), "cache_s": round(cache_s, 1),
               "student_train_s": round(student_s, 1), "slots": slots, "preset": args.preset, "seeds": args.seeds,
               "train_images": n_train, "cpus": os.cpu_count()}
    for name in ("wall_s", "floor_s", "estimate_s", "teacher_train_s", "cache_s", "student_train_s"):
        print(f"{name:<18}{figures[name]:>10.1f}")
    print(f"wall / floor {figures['wall_over_floor']:.2f}; the dry run was off by {100 * figures['estimate_error']:+.0f}%; "
          f"work folder {work}")
    print(json.dumps(figures))


def student_epochs(root: Path) -> list[dict]:
    """Every student's every reported epoch, from the result.json files Tune wrote (a pack's `<member>/` keys)."""
    epochs = []
    for result in root.glob("*/kd_trainable_*/result.json"):
        for line in result.read_text().splitlines():
            if line.strip():
                report = json.loads(line)
                members = {key.split("/", 1)[0] for key in report if "/" in key and key.endswith("/images_per_s")}
                epochs += [{"images_per_s": report[f"{m}/images_per_s"]} for m in members]
    return epochs


if __name__ == "__main__":
    main()
