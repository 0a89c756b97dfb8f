"""Population throughput: N distilled students one at a time, as a looped pack and as a stacked pack.

    python benchmarks/population.py --synthetic --n 1 4 --images 2000 --device cpu    # a CPU smoke run
    python benchmarks/population.py --synthetic --n 1 8 32 --device cuda              # 50,000 random images
    python benchmarks/population.py --n 1 8 32                                         # ../shared/datasets/cifar10-jpeg

For each N, N students (--model, default cnn3; seeds 0..N-1, each with its own T and alpha, as a
sweep's population) train --epochs epochs three ways, in one process, on the same images, device,
precision, recipe and batch size:

* one     N separate kdtune.engine.train.train() runs, one after another;
* loop    kdtune.engine.pack.train_pack(mode="loop"): the members in lockstep, one after another per epoch;
* stack   kdtune.engine.pack.train_pack(mode="stack"): the members as one vmap-batched computation (kdtune.engine.stack).

What is timed: training steps only, as the trainers themselves time them (the `images_per_s` of their
history): per epoch, the batch gathering and augmentation, forward, loss, backward and optimiser steps,
ended by the epoch's one device sync.  Model building, evaluation and checkpoint states are not timed
(each leg's wall time, which includes them, is reported beside it).  Aggregate images/s is
N x training images x epochs over the summed training seconds (the loop's members' seconds add up;
a stack's members share theirs).  Before timing, each way runs once on a few batches, untimed, so that
no leg pays the process's first CUDA kernels, cuDNN choices or vmap tracing alone.

Teacher logits are random fp16 numbers of a logit cache's shape, read through kdtune's CachedTeacher
exactly as a sweep reads a real cache: throughput does not depend on their values, and a real cache
would need a trained teacher first.  The data are CIFAR-10 (an image folder, --data-dir) or, with
--synthetic, random uint8 images (no dataset needed).

One line per (N, way) with images/s and the ratio to `one`, then one JSON object with every figure.
Expect stacking to lose on a CPU (it was 3-6x slower there) and to win on a GPU for small students.
Imports neither Ray nor Optuna (the JSON records that it did not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdtune.engine.config import RunConfig  # noqa: E402
from kdtune.engine.data import Splits, channel_stats, make_splits  # noqa: E402
from kdtune.engine.device import device_name, load_average, resolve_device, uses_bf16  # noqa: E402
from kdtune.engine.errors import UserError  # noqa: E402
from kdtune.engine.models import check_model_name  # noqa: E402
from kdtune.engine.pack import train_pack  # noqa: E402
from kdtune.engine.teacher import CachedTeacher, LogitCache  # noqa: E402
from kdtune.engine.train import train  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
SYNTHETIC_IMAGES = 50_000
EVAL_IMAGES = 256  # validation and test images: evaluated every epoch, never timed
WARMUP_BATCHES = 4
WAYS = ("one", "loop", "stack")
TEMPERATURES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
ALPHAS = (0.1, 0.3, 0.5, 0.7, 0.9)  # all > 0: every member reads the teacher cache


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn3", help="student architecture (default: cnn3)")
    p.add_argument("--n", type=int, nargs="+", default=[1, 8, 32], help="population sizes (default: 1 8 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--images", type=int, help="training images (default: all; 50,000 with --synthetic)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help=f"an image folder (default: {DEFAULT_DATA})")
    p.add_argument("--synthetic", action="store_true", help="random uint8 images: no dataset needed")
    p.add_argument("--epochs", type=int, default=1, help="epochs per student (default: 1)")
    p.add_argument("--recipe", default="seed", help="training recipe (default: seed: Adam, batch 128)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the recipe's)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto = bf16 on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default 0: torch's default)")
    args = p.parse_args(argv)
    if min(args.n) < 1 or args.epochs < 1 or (args.images is not None and args.images < 1):
        p.error("--n, --epochs and --images must be >= 1")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    return args


# ----------------------------------------------------------------------------- data and teacher


def synthetic_splits(n_train: int, seed: int = 0) -> Splits:
    g = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
    labels = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    train_images = images(n_train)
    mean, std = channel_stats(train_images)
    return Splits(train_images, labels(n_train), images(EVAL_IMAGES), labels(EVAL_IMAGES), images(EVAL_IMAGES),
                  labels(EVAL_IMAGES), tuple(str(i) for i in range(10)), key=f"synthetic-{n_train}-{seed}",
                  mean=mean, std=std)


def real_splits(data_dir: str, n_train: int | None) -> Splits:
    """The image folder through kdtune's decode cache, with small validation and test sets."""
    from kdtune.engine.data import load_dataset

    if not (Path(data_dir) / "train").is_dir():
        raise UserError(f"no image folder at {data_dir}; pass --data-dir or --synthetic")
    dataset = load_dataset(data_dir, download=False)
    pick = torch.randperm(len(dataset.test_labels), generator=torch.Generator().manual_seed(0))[:EVAL_IMAGES]
    pick = torch.sort(pick).values
    dataset = dataclasses.replace(dataset, test_images=dataset.test_images[pick], test_labels=dataset.test_labels[pick],
                                  fingerprint=f"{dataset.fingerprint}-test{EVAL_IMAGES}")
    room = len(dataset.train_labels) - EVAL_IMAGES
    return make_splits(dataset, val_size=EVAL_IMAGES, train_subset=min(n_train or room, room))


def random_teacher(splits: Splits, epochs: int, device: torch.device) -> CachedTeacher:
    """A CachedTeacher over random fp16 logits of a real cache's shapes (see the module docstring)."""
    g = torch.Generator().manual_seed(1)
    logits = lambda *shape: (4 * torch.randn(*shape, splits.num_classes, generator=g)).half()  # noqa: E731
    cache = LogitCache(train=logits(epochs, len(splits.train_labels)), val=logits(len(splits.val_labels)),
                       test=logits(len(splits.test_labels)), aug_seed=0, splits_key=splits.key)
    return CachedTeacher(cache, splits, device)


def population(n: int, args, epochs: int) -> list[RunConfig]:
    return [RunConfig(model=args.model, epochs=epochs, recipe=args.recipe, batch_size=args.batch_size, seed=i,
                      aug_seed=0, temperature=TEMPERATURES[i % len(TEMPERATURES)], alpha=ALPHAS[i % len(ALPHAS)],
                      precision=args.precision)
            for i in range(n)]


# ----------------------------------------------------------------------------- the three ways


def train_way(way: str, configs: list[RunConfig], splits: Splits, device, teacher) -> list[list[dict]]:
    """Train `configs` one way; every member's history."""
    if way == "one":
        return [train(c, splits, device, teacher=teacher).history for c in configs]
    return [r.history for r in train_pack(configs, splits, device, teacher=teacher, mode=way)]


def training_seconds(way: str, histories: list[list[dict]], n_images: int) -> float:
    """Summed training-step seconds, from the trainers' own per-epoch images_per_s (see the module docstring)."""
    if way == "stack":  # the members trained side by side: their seconds are one and the same
        return sum(n_images / h["images_per_s"] for h in histories[0])
    return sum(n_images / h["images_per_s"] for history in histories for h in history)


def warm_up(args, splits: Splits, device, teacher) -> None:
    """Every way once on a few batches, untimed: first CUDA kernels, cuDNN choices and vmap tracing."""
    batch = RunConfig(model=args.model, epochs=1, recipe=args.recipe, batch_size=args.batch_size).effective_batch_size
    small = min(len(splits.train_labels), WARMUP_BATCHES * batch)
    subset = dataclasses.replace(splits, train_images=splits.train_images[:small],
                                 train_labels=splits.train_labels[:small])
    configs = population(min(2, max(args.n)), args, epochs=1)
    for way in WAYS:
        train_way(way, configs, subset, device, teacher)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args) -> dict:
    check_model_name(args.model)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        splits, data = synthetic_splits(args.images or SYNTHETIC_IMAGES), "synthetic (random uint8 images)"
    else:
        splits, data = real_splits(args.data_dir, args.images), str(Path(args.data_dir))
    splits = splits.to(device)
    n_images = len(splits.train_labels)
    teacher = random_teacher(splits, args.epochs, device)
    precision = "bf16" if uses_bf16(args.precision, device) else "fp32"
    load_start = load_average()
    if load_start is not None and device.type == "cpu" and load_start >= (os.cpu_count() or 1):
        # Multi-threaded torch stalls erratically on busy cores (see benchmarks/kd_throughput.py).
        log(f"warning: the machine is busy (load average {load_start:.1f} on {os.cpu_count()} cores): expect noisy "
            f"numbers; --threads 1 is less sensitive")
    log(f"{args.model} on {n_images} {data} images, {args.epochs} epoch(s); device {device} "
        f"({device_name(device)}), {precision}, {torch.get_num_threads()} threads; teacher logits random")
    warm_up(args, splits, device, teacher)

    rows = []
    for n in args.n:
        configs = population(n, args, args.epochs)
        for way in WAYS:
            _sync(device)
            started = time.perf_counter()
            histories = train_way(way, configs, splits, device, teacher)
            _sync(device)
            wall = time.perf_counter() - started
            seconds = training_seconds(way, histories, n_images)
            rows.append({"n": n, "way": way, "img_s": n * n_images * args.epochs / seconds, "train_s": seconds,
                         "wall_s": wall})
            rows[-1]["ratio"] = rows[-1]["img_s"] / next(r["img_s"] for r in rows if r["n"] == n and r["way"] == "one")
            print_row(rows[-1])
    return {
        "rows": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
        "model": args.model,
        "recipe": args.recipe,
        "batch_size": configs[0].effective_batch_size,
        "epochs": args.epochs,
        "train_images": n_images,
        "data": data,
        "teacher_logits": "random fp16, read through CachedTeacher (values do not affect throughput)",
        "timed": "training steps only (trainers' images_per_s): gather, augment, forward, loss, backward, step",
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": load_start,
        "load_avg_end": load_average(),
        "torch": torch.__version__,
        "imported_ray_or_optuna": sorted({m.split(".")[0] for m in sys.modules} & {"ray", "optuna"}),
    }


# ----------------------------------------------------------------------------- output


def print_row(r: dict) -> None:
    print(f"N={r['n']:<4} {r['way']:<6} {r['img_s']:>10.1f} img/s  {r['ratio']:>6.2f}x one-at-a-time  "
          f"(train {r['train_s']:.1f} s, wall {r['wall_s']:.1f} s)", flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
