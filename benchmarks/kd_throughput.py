"""Distillation training throughput: the seed project's way vs kdtune's cached-logit step.

    python benchmarks/kd_throughput.py                                   # synthetic data, CPU defaults
    python benchmarks/kd_throughput.py --data-dir /work/shared/datasets/cifar10-jpeg
    python benchmarks/kd_throughput.py --device cuda --precision bf16 --steps 200 --seed-steps 100
    python benchmarks/kd_throughput.py --threads 1     # on a machine shared with other jobs

Three legs, in one process, on the same images, student, batch size, device and precision:

* seed_style    PIL images through torchvision transforms in a DataLoader (2 workers, shuffle),
                a live teacher forward (eval, no_grad) every step, Adam step on kdtune.engine.losses.kd_loss;
* kdtune        kdtune.engine.train.train() with a CachedTeacher: teacher logits precomputed once with
                kdtune.engine.teacher.teacher_logits (its build time is reported separately);
* student_only  kdtune.engine.train.train() with alpha = 0: no teacher at all.

The kdtune legs train on a stratified subset of --steps * --batch-size images for 2 epochs and report
the `images_per_s` of the second epoch from train()'s history (the first is a discarded warm-up;
images_per_s counts training time only, not the per-epoch evaluation).  Each is repeated --repeats
times, kdtune and student_only interleaved (ABBA) so that noise from other processes hits both
alike, and the median is reported.  The seed leg warms up for --warmup steps and then times
--seed-steps steps (it is ~10x slower, so it times fewer).  Numbers compare only on one machine.

On a CPU that other processes are busy with, multi-threaded torch slows down erratically (an OpenMP
thread that is descheduled stalls the others; here the small student dropped ~10x, the big teacher
~2-4x), so the numbers and their ratios are then noise: the run warns when the load average is at
or above the core count and records it in the JSON.  --threads 1 is much less sensitive to that.

The last line printed is one JSON object with all the numbers.  Nothing is written outside temporary
folders (the decode cache goes to a temporary $KDTUNE_CACHE_DIR; the data dir is only read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdtune.engine.config import RunConfig
from kdtune.engine.data import Dataset, make_splits
from kdtune.engine.device import autocast, device_name, load_average, resolve_device, uses_bf16
from kdtune.engine.errors import UserError
from kdtune.engine.losses import kd_loss
from kdtune.engine.models import check_model_name, create_model
from kdtune.engine.train import build_optimizer, train

SEED_MEAN = (0.4914, 0.4822, 0.4465)
SEED_STD = (0.2023, 0.1994, 0.2010)
TEMPERATURE = 4.0
ALPHA = 0.3  # the seed's default
EVAL_IMAGES = 256  # val and test sizes: only the per-epoch evaluation and the cache's val/test logits use them
SYNTHETIC_MAX = 50_000
WARMUP_EPOCHS = 1  # kdtune legs: epochs discarded before the measured one
MEASURED_EPOCHS = 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="resnet18", help="teacher architecture (default: resnet18)")
    p.add_argument("--student", default="cnn3", help="student architecture (default: cnn3)")
    p.add_argument("--data-dir", help="CIFAR-10 or an image folder (train/<class>, test/<class>); default: synthetic")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of every leg (default: 128, the seed's)")
    p.add_argument("--steps", type=int, default=32, help="timed steps of each kdtune / student_only run (one epoch)")
    p.add_argument("--warmup", type=int, default=4, help="seed_style warm-up steps (kdtune legs warm up for one epoch)")
    p.add_argument("--seed-steps", type=int, default=20, help="timed steps of the seed_style leg (default: 20)")
    p.add_argument("--repeats", type=int, default=4, help="runs of each kdtune leg; the median is reported")
    p.add_argument("--workers", type=int, default=2, help="seed_style DataLoader workers (default: 2, the seed's)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default 0: torch's default)")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "seed_steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.workers < 0 or args.threads < 0:
        p.error("--warmup, --workers and --threads must be >= 0")
    return args


# ----------------------------------------------------------------------------- data


def synthetic_dataset(n_train: int, n_test: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        train_images=torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_labels=torch.randint(0, 10, (n_train,), generator=g),
        test_images=torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
        test_labels=torch.randint(0, 10, (n_test,), generator=g),
        classes=tuple(str(i) for i in range(10)),
        fingerprint=f"synthetic-{n_train}-{n_test}-{seed}",
    )


def load_real(data_dir: str, n_test: int) -> Dataset:
    from kdtune.engine.data import load_dataset

    dataset = load_dataset(data_dir, download=False)
    # A small, class-mixed test set: evaluation is not timed, but it costs wall time every epoch and
    # the teacher cache computes its logits too.
    pick = torch.randperm(len(dataset.test_labels), generator=torch.Generator().manual_seed(0))[:n_test]
    pick = torch.sort(pick).values
    return dataclasses.replace(
        dataset,
        test_images=dataset.test_images[pick],
        test_labels=dataset.test_labels[pick],
        fingerprint=f"{dataset.fingerprint}-test{n_test}",
    )


class PILDataset(torch.utils.data.Dataset):
    """uint8 (N, 3, 32, 32) tensors served as PIL images, as torchvision's CIFAR10 serves its numpy arrays."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from torchvision.transforms.functional import to_pil_image

        return self.transform(to_pil_image(self.images[i])), self.labels[i]


# ----------------------------------------------------------------------------- the legs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_seed_style(splits, args, device: torch.device, precision: str) -> dict:
    """The seed's loop: torchvision transforms on PIL images, live teacher every step, Adam on kd_loss."""
    import torchvision.transforms as T

    transform = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(SEED_MEAN, SEED_STD)]
    )
    dataset = PILDataset(splits.train_images, splits.train_labels, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    torch.manual_seed(0)
    teacher = create_model(args.teacher).to(device).eval()
    student = create_model(args.student).to(device).train()
    config = RunConfig(model=args.student, epochs=1, alpha=ALPHA, temperature=TEMPERATURE, precision=precision)
    optimizer = build_optimizer(student, config)  # the seed recipe: Adam, lr 1e-3, weight decay 1e-4

    def batches():
        while True:  # as many epochs as the steps need
            yield from loader

    stream = batches()
    timed_images, started = 0, None
    for step in range(args.warmup + args.seed_steps):
        if step == args.warmup:
            _sync(device)
            started = time.perf_counter()
        images, labels = next(stream)
        images, labels = images.to(device), labels.to(device)
        with torch.no_grad(), autocast(precision, device):
            teacher_logits = teacher(images)
        with autocast(precision, device):
            student_logits = student(images)
        loss = kd_loss(student_logits, teacher_logits, labels, TEMPERATURE, ALPHA)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            timed_images += len(labels)
    loss.item()  # the last step's work is done before the clock stops
    _sync(device)
    seconds = time.perf_counter() - started
    del stream  # shuts the workers down
    return {"img_s": timed_images / seconds, "images": timed_images, "seconds": seconds}


def build_cache(teacher_model, splits, args, device: torch.device, precision: str, folder: Path):
    """Save the (untrained) teacher as kdtune does and build its logit cache with the library's code."""
    from kdtune.engine.checkpoint import save_model
    from kdtune.engine.teacher import Teacher, teacher_logits

    path = save_model(folder / "teacher" / "model.pt", teacher_model, args.teacher, {})
    teacher = Teacher(model=teacher_model.cpu().eval(), meta={}, path=path)
    epochs = WARMUP_EPOCHS + MEASURED_EPOCHS
    # Two calls so the report can split the cost: the first computes val/test and epoch 0, the second
    # only the remaining epochs (it reloads the rest from the files the first one wrote).
    started = time.perf_counter()
    teacher_logits(teacher, splits, aug_seed=0, epochs=1, device=device, precision=precision)
    _sync(device)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    cache = teacher_logits(teacher, splits, aug_seed=0, epochs=epochs, device=device, precision=precision)
    _sync(device)
    rest_s = time.perf_counter() - started
    per_epoch_s = rest_s / (epochs - 1)
    return cache, {
        "cache_build_s": first_s + rest_s,
        "cache_epochs": epochs,
        "cache_epoch_s": per_epoch_s,
        "cache_eval_s": max(0.0, first_s - per_epoch_s),
        "cache_teacher_img_s": len(splits.train_labels) / per_epoch_s,
    }


def bench_kdtune(splits, args, device, precision: str, alpha: float, teacher_signal, repeat: int) -> float:
    config = RunConfig(
        model=args.student,
        epochs=WARMUP_EPOCHS + MEASURED_EPOCHS,
        recipe="seed",
        alpha=alpha,
        temperature=TEMPERATURE,
        seed=repeat,
        aug_seed=0,
        batch_size=args.batch_size,
        precision=precision,
    )
    result = train(config, splits, device, teacher=teacher_signal if alpha > 0 else None)
    measured = result.history[WARMUP_EPOCHS:]
    # images_per_s is per epoch; the harmonic mean is total images over total time.
    return len(measured) / sum(1.0 / m["images_per_s"] for m in measured)


# ----------------------------------------------------------------------------- main


def run(args) -> dict:
    from kdtune.engine.teacher import CachedTeacher

    check_model_name(args.teacher)
    check_model_name(args.student)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    if load_before is not None and load_before >= (os.cpu_count() or 1):
        log(f"warning: the machine is busy (load average {load_before:.1f} on {os.cpu_count()} cores): "
            f"expect noisy, low numbers")
    mode = "bf16" if uses_bf16(args.precision, device) else "fp32"
    n_train = args.steps * args.batch_size

    with tempfile.TemporaryDirectory(prefix="kd-throughput-") as tmp:
        tmp = Path(tmp)
        if args.data_dir:
            os.environ["KDTUNE_CACHE_DIR"] = str(tmp / "decode-cache")  # never the user's cache nor the data dir
            started = time.perf_counter()
            dataset = load_real(args.data_dir, EVAL_IMAGES)
            data_load_s = time.perf_counter() - started
            data_name = str(Path(args.data_dir))
        else:
            if n_train + EVAL_IMAGES > SYNTHETIC_MAX:
                raise UserError(f"--steps * --batch-size must be at most {SYNTHETIC_MAX - EVAL_IMAGES} for synthetic data")
            started = time.perf_counter()
            dataset = synthetic_dataset(n_train + EVAL_IMAGES, EVAL_IMAGES)
            data_load_s = time.perf_counter() - started
            data_name = "synthetic"
        splits = make_splits(dataset, val_size=EVAL_IMAGES, train_subset=n_train, split_seed=0)
        del dataset
        log(f"data: {data_name}, {n_train} training images ({data_load_s:.1f}s to load); "
            f"device {device}, {mode}, {torch.get_num_threads()} threads")

        log(f"seed_style: {args.warmup} warm-up + {args.seed_steps} timed steps (live {args.teacher})...")
        seed = bench_seed_style(splits, args, device, mode)
        log(f"  {seed['img_s']:.1f} img/s")

        log(f"building the {args.teacher} logit cache ({WARMUP_EPOCHS + MEASURED_EPOCHS} epochs)...")
        torch.manual_seed(0)
        cache, cache_stats = build_cache(create_model(args.teacher), splits, args, device, mode, tmp)
        log(f"  {cache_stats['cache_build_s']:.1f}s ({cache_stats['cache_teacher_img_s']:.1f} img/s on training views)")
        cached = CachedTeacher(cache, splits, device)

        kd_runs, plain_runs = [], []
        for r in range(args.repeats):
            # ABBA order: a load that drifts during the run favours neither leg.
            kd_first = r % 2 == 0
            for alpha in (ALPHA, 0.0) if kd_first else (0.0, ALPHA):
                runs = kd_runs if alpha > 0 else plain_runs
                runs.append(bench_kdtune(splits, args, device, mode, alpha, cached, r))
            log(f"repeat {r + 1}/{args.repeats}: kdtune {kd_runs[-1]:.1f} img/s, student_only {plain_runs[-1]:.1f} img/s")

    kd, plain = statistics.median(kd_runs), statistics.median(plain_runs)
    return {
        "seed_style_img_s": round(seed["img_s"], 2),
        "kdtune_img_s": round(kd, 2),
        "student_only_img_s": round(plain, 2),
        "speedup_vs_seed": round(kd / seed["img_s"], 3),
        "kd_overhead": round(plain / kd, 4),
        "cache_build_s": round(cache_stats["cache_build_s"], 2),
        "cache_epoch_s": round(cache_stats["cache_epoch_s"], 2),
        "cache_eval_s": round(cache_stats["cache_eval_s"], 2),
        "cache_epochs": cache_stats["cache_epochs"],
        "cache_teacher_img_s": round(cache_stats["cache_teacher_img_s"], 2),
        "kdtune_runs_img_s": [round(x, 2) for x in kd_runs],
        "student_only_runs_img_s": [round(x, 2) for x in plain_runs],
        "seed_style_timed_images": seed["images"],
        "kdtune_timed_images": n_train * MEASURED_EPOCHS,
        "device": str(device),
        "device_name": device_name(device),
        "precision": mode,
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": args.batch_size,
        "data": data_name,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": load_before,
        "load_avg_end": load_average(),
        "torch": torch.__version__,
    }


def _spread(runs: list[float]) -> str:
    """(max - min) / median of the repeats, as a percentage: how much to trust the median."""
    return f"{100 * (max(runs) - min(runs)) / statistics.median(runs):.0f}%" if len(runs) > 1 else "-"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def report(r: dict) -> None:
    rows = [
        ("seed_style", r["seed_style_img_s"], f"PIL + torchvision DataLoader, live {r['teacher']} every step"),
        ("kdtune", r["kdtune_img_s"], "train() with cached teacher logits"),
        ("student_only", r["student_only_img_s"], "train() with alpha = 0, no teacher"),
    ]
    print(f"\nKD training throughput: {r['teacher']} -> {r['student']}, batch {r['batch_size']}, data {r['data']}")
    print(f"device {r['device']} ({r['device_name']}), precision {r['precision']}, {r['threads']} torch threads, "
          f"load average {r['load_avg_start']} -> {r['load_avg_end']} on {r['cpu_count']} cores\n")
    spread = {
        "kdtune": _spread(r["kdtune_runs_img_s"]),
        "student_only": _spread(r["student_only_runs_img_s"]),
    }
    print(f"{'leg':<14}{'images/s':>11}{'relative':>10}{'spread':>9}   what")
    for name, value, what in rows:
        print(f"{name:<14}{value:>11.1f}{value / r['seed_style_img_s']:>9.2f}x{spread.get(name, '-'):>9}   {what}")
    print()
    print(f"speedup_vs_seed (kdtune / seed_style):     {r['speedup_vs_seed']:.2f}x")
    print(f"kd_overhead (student_only / kdtune):       {r['kd_overhead']:.3f}")
    print(
        f"cache build: {r['cache_build_s']:.1f}s for {r['cache_epochs']} epochs of {r['kdtune_timed_images']} views "
        f"({r['cache_epoch_s']:.1f}s per epoch, teacher at {r['cache_teacher_img_s']:.1f} img/s) + val/test logits "
        f"(~{r['cache_eval_s']:.1f}s); built once per teacher and aug_seed, shared by every T, alpha and seed"
    )
    per_image = 1 / r["kdtune_img_s"] + 1 / r["cache_teacher_img_s"]
    print(
        f"one trial including its own cache build: {1 / per_image:.1f} img/s "
        f"({1 / per_image / r['seed_style_img_s']:.2f}x seed_style)"
    )
    print(json.dumps(r))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
