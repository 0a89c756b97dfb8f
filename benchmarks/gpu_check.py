"""What kdtune's training does on a GPU, in one command that needs only PyTorch (no Ray, no Optuna), so that it
runs on a machine lent for a few minutes:

    python benchmarks/gpu_check.py --json gpu_check.json             # on a CUDA machine, a few minutes
    python benchmarks/gpu_check.py --device cpu --tiny --json x.json  # the same parts, small, on a CPU

Parts, each recording its own failure without hiding the others:
  environment   PyTorch, CUDA, cuDNN, the device, bf16 support
  losses        kd, ls, ctkd and dkd on bf16 logits against the same loss in float64
  distill       a distillation run with the teacher-logit cache on the device, on synthetic CIFAR-shaped
                data, twice (equal?) and twice more with --deterministic (equal?)
  deterministic_models
                models that pool adaptively (cnn3 on 40x40 images, torchvision's and timm's resnet18, at
                full scale vgg11) trained twice with --deterministic: do they run, and equal?
  pack_equality the same pack trained as a loop and as a stack: largest difference
  step_time     one student's training step: eager, eager with the fused optimizer, torch.compile
  throughput    images/s of 1, 8 and 32 students (1, 2, 4 with --tiny) as a loop and as a stack
  processes     images/s of 1, 2, 4, 8 and 16 processes sharing the device (1, 2 with --tiny), each training
                a trial's 3 seeds, and of one process stacking 6 and 12: what Ray's fractional GPUs and
                stacked packs give, and the choice kdtune's GPU fill would make from them
  host_syncs    synchronisations with the host per training step and per epoch (CUDA's sync debug mode), or
                on a CPU the tensors built from Python values and the values read back
Every speed is measured side by side in the one run; nothing is estimated.  The JSON summary is rewritten
after every part, so that a run stopped by a time limit keeps the parts it finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kdtune.engine.config import RunConfig  # noqa: E402
from kdtune.engine.data import Splits, channel_stats  # noqa: E402
from kdtune.engine.device import CUBLAS_DETERMINISTIC, autocast, configure, device_name, native_bf16  # noqa: E402
from kdtune.engine.errors import first_line  # noqa: E402
from kdtune.engine.losses import kd_loss_terms  # noqa: E402
from kdtune.engine.pack import train_pack  # noqa: E402
from kdtune.engine.teacher import CachedTeacher, LogitCache, compute_logits  # noqa: E402
from kdtune.engine.train import train  # noqa: E402

AUG_SEED = 1


@dataclasses.dataclass(frozen=True)
class Scale:
    student: str
    images: int
    epochs: int
    members: tuple[int, ...]
    processes: tuple[int, ...]
    steps: int
    stacks: tuple[int, ...]


FULL = Scale("cnn3", 8192, 2, (1, 8, 32), (1, 2, 4, 8, 16), 20, (6, 12))
TINY = Scale("tinycnn", 256, 1, (1, 2, 4), (1, 2), 3, (6,))


def synthetic_splits(n: int, classes: int = 10, seed: int = 0, size: int = 32) -> Splits:
    """CIFAR-shaped uint8 images whose class is a bright square's place: learnable, made here, no download."""
    g = torch.Generator().manual_seed(seed)

    def part(count: int):
        labels = torch.randint(0, classes, (count,), generator=g)
        images = torch.randint(0, 100, (count, 3, size, size), dtype=torch.uint8, generator=g)
        for c in range(classes):
            r, col = 2 + 9 * (c // 4), 2 + 9 * (c % 4)
            images[labels == c, :, r:r + 7, col:col + 7] = 255
        return images, labels

    train_x, train_y = part(n)
    val_x, val_y = part(max(64, n // 8))
    test_x, test_y = part(max(64, n // 8))
    mean, std = channel_stats(train_x)
    return Splits(train_x, train_y, val_x, val_y, test_x, test_y, tuple(f"c{i}" for i in range(classes)),
                  key=f"gpu-check-{n}-{seed}-{size}", mean=mean, std=std)


def synced(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- the parts


def environment(device: torch.device, scale: Scale, splits: Splits) -> dict:
    out = {"torch": torch.__version__, "python": platform.python_version(), "device": device_name(device),
           "device_type": device.type, "threads": torch.get_num_threads(), "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "student": scale.student, "images": len(splits.train_labels), "kdtune_commit": _commit()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                   bf16=torch.cuda.is_bf16_supported(), native_bf16=native_bf16(device))
    return out


def _commit() -> str | None:
    """The checkout's commit, so that figures name the code they measured (None outside a git checkout)."""
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def losses(device: torch.device) -> dict:
    """Each method's loss on bf16 logits (as autocast leaves them) against the same logits' loss in float64."""
    g = torch.Generator().manual_seed(0)
    student = (3 * torch.randn(512, 10, generator=g)).to(device)
    teacher = (5 * torch.randn(512, 10, generator=g)).to(device)
    targets = torch.randint(0, 10, (512,), generator=g).to(device)
    out = {}
    for method in ("kd", "ls", "ctkd", "dkd"):
        for temperature in (1.0, 4.0, 16.0):
            s16, t16 = student.bfloat16(), teacher.bfloat16()
            got = kd_loss_terms(s16, t16, targets, temperature, 0.9, method=method)[0].item()
            reference = _float64_loss(s16.double(), t16.double(), targets, temperature, 0.9, method)
            out[f"{method}@T{temperature:g}"] = {"bf16": got, "float64": reference,
                                                 "relative_error": abs(got - reference) / abs(reference)}
    out["max_relative_error"] = max(v["relative_error"] for v in out.values())
    return out


def _float64_loss(s, t, y, temperature, alpha, method) -> float:
    """The losses written out in float64 (ctkd's loss is kd's at its current T; CE is on the raw logits)."""
    ce = torch.nn.functional.cross_entropy(s, y)
    if method == "ls":
        s = (s - s.mean(1, keepdim=True)) / (1e-7 + s.std(1, keepdim=True))
        t = (t - t.mean(1, keepdim=True)) / (1e-7 + t.std(1, keepdim=True))
    log_ps, log_pt = torch.log_softmax(s / temperature, 1), torch.log_softmax(t / temperature, 1)
    if method == "dkd":
        mask = torch.nn.functional.one_hot(y, s.shape[1]).bool()

        def binary(lp):
            return torch.stack([lp[mask], torch.logsumexp(lp.masked_fill(mask, -math.inf), 1)], 1)

        bs, bt = binary(log_ps), binary(log_pt)
        tckd = (bt.exp() * (bt - bs)).sum(1)
        qs = (log_ps - bs[:, 1:]).masked_fill(mask, 0)
        qt = (log_pt - bt[:, 1:]).masked_fill(mask, 0)
        nckd = (qt.exp().masked_fill(mask, 0) * (qt - qs)).sum(1)
        kd = (tckd + 8.0 * nckd).mean() * temperature**2
    else:
        kd = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * temperature**2
    return float(alpha * kd + (1 - alpha) * ce)


def _cache(splits: Splits, device: torch.device, epochs: int) -> CachedTeacher:
    teacher = RunConfig(model="tinycnn", epochs=1, recipe="strong", precision="fp32", aug_seed=0)
    model = train(teacher, splits, device).model
    names = ["val", "test", *range(epochs)]
    logits = compute_logits(model, splits, names, AUG_SEED, device, "bf16" if device.type == "cuda" else "fp32")
    cache = LogitCache(torch.stack([logits[e] for e in range(epochs)]), logits["val"], logits["test"], AUG_SEED,
                       splits.key)
    return CachedTeacher(cache, splits, device)


def _trained_twice(config: RunConfig, splits: Splits, device: torch.device, teacher=None) -> tuple[dict, dict, float, float]:
    """`config` trained twice: (the first run's final metrics, the second's, the first's wall seconds, the largest
    difference between their parameters)."""
    runs = []
    for _ in range(2):
        synced(device)
        started = time.perf_counter()
        result = train(config, splits, device, teacher=teacher)
        synced(device)
        runs.append((result.final, time.perf_counter() - started,
                     [p.detach().float().cpu() for p in result.model.parameters()]))
    (a, wall, pa), (b, _, pb) = runs
    return a, b, wall, max(float((x - y).abs().max()) for x, y in zip(pa, pb))


def distill(device: torch.device, scale: Scale, splits: Splits, teacher: CachedTeacher) -> dict:
    config = RunConfig(model=scale.student, epochs=scale.epochs, recipe="strong", alpha=0.9, temperature=4.0,
                       aug_seed=AUG_SEED)
    out = {}
    for deterministic in (False, True):
        configure(device, deterministic)
        try:
            a, b, wall, difference = _trained_twice(config, splits, device, teacher)
            out["deterministic" if deterministic else "default"] = {
                "val_acc": a["val_acc"], "test_acc": a["test_acc"], "test_agreement": a["test_agreement"],
                "wall_s": wall, "equal_metrics": a["val_acc"] == b["val_acc"] and a["train_loss"] == b["train_loss"],
                "max_parameter_difference": difference}
        finally:
            configure(device, False)
    return out


def deterministic_models(device: torch.device, scale: Scale) -> dict:
    """Models that pool adaptively, trained twice under --deterministic without a teacher: do they run, and
    equal?  cnn3 on 40x40 images (its GridPool pools to 4x4), torchvision's and timm's resnet18 (to 1x1) and,
    at full scale, torchvision's vgg11 (to 7x7): PyTorch has no deterministic CUDA backward for an adaptive
    pool to more than 1x1, and kdtune.engine.models.adaptive_avg_pool2d stands in for it there."""
    import importlib.util

    n = max(128, scale.images // 8)
    models = [("cnn3 at 40x40", "cnn3", 40), ("torchvision:resnet18", "torchvision:resnet18", 32)]
    models += [("timm:resnet18", "timm:resnet18", 32)] if importlib.util.find_spec("timm") else []
    models += [] if scale is TINY else [("torchvision:vgg11", "torchvision:vgg11", 32)]
    out = {}
    configure(device, True)
    try:
        for label, spec, size in models:
            splits = synthetic_splits(n, seed=1, size=size)
            config = RunConfig(model=spec, epochs=1, recipe="strong", alpha=0.0, aug_seed=AUG_SEED)
            try:
                _, _, wall, difference = _trained_twice(config, splits, device)
                out[label] = {"equal": difference == 0.0, "max_parameter_difference": difference, "wall_s": wall}
            except Exception as error:
                out[label] = {"error": f"{type(error).__name__}: {first_line(error)}"}
    finally:
        configure(device, False)
    failed = "; ".join(f"{k}: {v['error']}" for k, v in out.items() if "error" in v)
    return {**out, "ok": not failed, **({"error": failed} if failed else {})}  # each model's result kept


def pack_equality(device: torch.device, scale: Scale, splits: Splits, teacher: CachedTeacher) -> dict:
    members = [RunConfig(model="tinycnn", epochs=1, recipe="strong", alpha=a, temperature=t, seed=s,
                         aug_seed=AUG_SEED, precision="fp32")
               for s, (t, a) in enumerate([(2.0, 0.5), (4.0, 0.9), (8.0, 0.5), (4.0, 0.0)])]
    loop = train_pack(members, splits, device, teacher, mode="loop")
    stack = train_pack(members, splits, device, teacher, mode="stack")
    keys = ("train_loss", "val_acc", "val_nll", "test_acc")
    diffs = {k: max(abs(x.final[k] - y.final[k]) for x, y in zip(loop, stack)) for k in keys}
    return {"members": len(members), "max_difference": diffs}


def _one_step_timer(config: RunConfig, splits: Splits, device: torch.device, teacher, steps: int, fused: bool,
                    compiled: bool) -> dict:
    from kdtune.engine.models import create_model
    from kdtune.engine.train import build_optimizer, training_views

    torch.manual_seed(0)
    model = create_model(config.model, splits.num_classes).to(device=device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    if not fused:
        optimizer = type(optimizer)(model.parameters(), **{k: v for k, v in optimizer.defaults.items()
                                                            if k not in ("fused", "foreach")}, foreach=False)
    batch = config.effective_batch_size
    idx = torch.arange(batch, device=device) % len(splits.train_labels)
    on = splits.to(device)
    params = torch.zeros(len(on.train_labels), 3, dtype=torch.long, device=device)
    images, labels = training_views(on.train_images[idx], params[idx], on), on.train_labels[idx]
    logits_t = teacher.train_logits(0, idx % len(on.train_labels), images)
    forward = model
    compile_s = None
    if compiled:
        started = time.perf_counter()
        forward = torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)

    def step():
        with autocast(config.precision, device):
            out = forward(images)
        loss = kd_loss_terms(out, logits_t, labels, config.temperature, config.alpha)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    synced(device)
    if compiled:
        compile_s = time.perf_counter() - started
    for _ in range(2):
        step()
    synced(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synced(device)
    seconds = (time.perf_counter() - started) / steps
    return {"step_ms": 1000 * seconds, "images_per_s": batch / seconds, "compile_s": compile_s}


def step_time(device: torch.device, scale: Scale, splits: Splits, teacher: CachedTeacher,
              precision: str = "auto") -> dict:
    config = RunConfig(model=scale.student, epochs=1, recipe="strong", alpha=0.9, temperature=4.0, aug_seed=AUG_SEED,
                       precision=precision)
    out = {"batch": config.effective_batch_size, "precision": precision}
    for name, fused, compiled in (("eager", False, False), ("eager_fused", True, False), ("compiled", True, True)):
        if name == "eager_fused" and device.type != "cuda":
            continue  # fused optimizers are kdtune's choice on CUDA only
        try:
            out[name] = _one_step_timer(config, splits, device, teacher, scale.steps, fused, compiled)
        except Exception as error:  # compile may be unavailable (no compiler here): said, the rest still runs
            out[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    return out


def throughput(device: torch.device, scale: Scale, splits: Splits, teacher: CachedTeacher) -> dict:
    from kdtune.engine.pack import measure_pack_modes

    out = {}
    for n in scale.members:
        members = [RunConfig(model=scale.student, epochs=1, recipe="strong", alpha=0.9, temperature=4.0, seed=s,
                             aug_seed=AUG_SEED) for s in range(n)]
        if n == 1:
            members = members * 2  # a stack needs two; the loop's rate per student is the same
            rates = measure_pack_modes(members, splits, device, teacher, steps=scale.steps)
            out["1"] = {"loop": rates["loop"] / 2}
        else:
            out[str(n)] = measure_pack_modes(members, splits, device, teacher, steps=scale.steps)
    return out


def processes(device: torch.device, scale: Scale) -> dict:
    """What kdtune's GPU fill measures and chooses (kdtune.engine.fill): processes, each training a trial's pack
    of 3 seeds, side by side from a common start (images/s summed, device memory each); one process stacking 6
    and 12 students; and the choice a temperature grid of 11 trials would get from them."""
    from kdtune.engine.fill import FillChoice, Probe, choose_fill, free_bytes, measure_processes, process_limit

    probe = Probe(scale.student, 10, (32, 32), 128, "auto", 3,
                  steps=scale.steps, threads=1, sys_path=tuple(sys.path))
    measured = [measure_processes(probe, device, count) for count in scale.processes]
    stacks = {m: measure_processes(dataclasses.replace(probe, members=m, mode="stack"), device, 1)
              for m in scale.stacks}
    gpus = max(1, torch.cuda.device_count()) if device.type == "cuda" else 1
    limit, why = process_limit(measured[0].bytes_per_process, free_bytes(device), (os.cpu_count() or 1) / gpus, 1, 11)
    choice: FillChoice = choose_fill(measured, stacks, limit, why)
    return {**{str(m.processes): dataclasses.asdict(m) for m in measured},
            "stacks": {str(m): dataclasses.asdict(r) for m, r in stacks.items()}, "choice": choice.to_dict()}


def host_syncs(device: torch.device, scale: Scale, splits: Splits, teacher: CachedTeacher) -> dict:
    """Synchronisations in the training step, and in an epoch's set-up around the steps (its shuffled order and
    augmentation draws copied to the device, its summed losses read back)."""
    from kdtune.engine import train as loop

    config = RunConfig(model=scale.student, epochs=1, recipe="strong", alpha=0.9, temperature=4.0, aug_seed=AUG_SEED,
                       batch_size=64)
    real = loop._train_epoch
    counted = {"calls": 0}
    if device.type == "cuda":
        def epoch(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    result = real(*args, **kwargs)
                counted["calls"] += sum("synchroniz" in str(w.message) for w in seen)
                return result
            finally:
                torch.cuda.set_sync_debug_mode("default")
        what = "synchronising CUDA calls (torch.cuda.set_sync_debug_mode)"
    else:
        originals = {name: getattr(torch, name) for name in ("tensor", "as_tensor", "scalar_tensor")}
        item = torch.Tensor.item
        inside = [False]

        def counting(original):
            def wrapper(*args, **kwargs):
                counted["calls"] += inside[0]
                return original(*args, **kwargs)
            return wrapper

        def epoch(*args, **kwargs):
            inside[0] = True
            try:
                return real(*args, **kwargs)
            finally:
                inside[0] = False

        for name, original in originals.items():
            setattr(torch, name, counting(original))
        torch.Tensor.item = counting(item)
        what = "tensors built from Python values and values read back (a CPU has no synchronisation to count)"
    runs = {}
    loop._train_epoch = epoch
    try:
        for batch in (64, 32):
            counted["calls"] = 0
            train(dataclasses.replace(config, batch_size=batch), splits, device, teacher=teacher)
            runs[batch] = (math.ceil(len(splits.train_labels) / batch), counted["calls"])
    finally:
        loop._train_epoch = real
        if device.type != "cuda":
            for name, original in originals.items():
                setattr(torch, name, original)
            torch.Tensor.item = item
    (steps, count), (more_steps, more) = runs[64], runs[32]
    per_step = (more - count) / (more_steps - steps)
    return {"counted": what, "steps": steps, "count": count, "per_step": per_step,
            "per_epoch": count - per_step * steps,
            "how": "an epoch at batch 64 and at batch 32: what the extra steps add is per step, the rest per epoch"}


# ----------------------------------------------------------------------------- the command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="small sizes: a check of this script, not a measurement")
    parser.add_argument("--parts", nargs="+", help="only these parts (default: all)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="of step_time's student (default auto: bf16 on CUDA, fp32 on a CPU)")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; use --device cpu --tiny to check the script", file=sys.stderr)
        return 2
    scale = TINY if args.tiny else FULL
    # cuBLAS takes its workspace setting at first use, before the deterministic parts ask for it (as the kdtune
    # command sets it before any work under --deterministic).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    configure(device)
    splits = synthetic_splits(scale.images)
    summary: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "scale": "tiny" if args.tiny else "full"}
    teacher = None
    parts = {
        "environment": lambda: environment(device, scale, splits),
        "losses": lambda: losses(device),
        "distill": lambda: distill(device, scale, splits, teacher),
        "deterministic_models": lambda: deterministic_models(device, scale),
        "pack_equality": lambda: pack_equality(device, scale, splits, teacher),
        "step_time": lambda: step_time(device, scale, splits, teacher, args.precision),
        "throughput": lambda: throughput(device, scale, splits, teacher),
        "processes": lambda: processes(device, scale),
        "host_syncs": lambda: host_syncs(device, scale, splits, teacher),
    }
    unknown = set(args.parts or []) - set(parts)
    if unknown:
        print(f"gpu_check: unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(parts)}", file=sys.stderr)
        return 2
    try:
        teacher = _cache(splits, device, scale.epochs)
    except Exception:
        summary["teacher_cache_error"] = traceback.format_exc(limit=3)
    for name, run in parts.items():
        if args.parts and name not in args.parts:
            continue
        started = time.perf_counter()
        try:
            if teacher is None and name not in ("environment", "losses", "deterministic_models", "processes"):
                raise RuntimeError("no teacher cache (see teacher_cache_error)")
            summary[name] = {"ok": True, **run()}
        except Exception as error:
            summary[name] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                             "traceback": traceback.format_exc(limit=4)}
        summary[name]["seconds"] = round(time.perf_counter() - started, 2)
        print(f"{name}: {'ok' if summary[name]['ok'] else 'FAILED: ' + summary[name]['error']} "
              f"({summary[name]['seconds']} s)", flush=True)
        if args.json:
            _write(Path(args.json), summary)
    if args.json:
        _write(Path(args.json), summary)
    else:
        print(json.dumps(summary, indent=2, default=str))
    return 0 if all(v.get("ok", True) for v in summary.values() if isinstance(v, dict)) else 1


def _write(path: Path, summary: dict) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(summary, indent=2, default=str))
    partial.replace(path)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
