"""How many trials share a GPU, and how many students a trial trains: chosen by measuring on the GPU.

A small student's training step is a few hundred kernel launches around little arithmetic: on a large GPU one
trial keeps the device busy a fraction of the time.  Two levers fill it:

    processes  several trials on one GPU (Ray's fractional GPUs): their launches overlap on the device
    a stack    one trial trains more students as one batched computation (--pack N, pack mode stack)

`measure_processes` starts k worker processes on the device, each training one trial's pack for a few steps
on synthetic data of the experiment's shape, and times them side by side after a common start: the sum of
their images/s, and the device memory each holds.  `measure_fill` runs it for k = 1, 2, 4, ... (stopping
where a doubling stops paying or no more fit) and for one process training a stack of m students.
`choose_fill` then takes the fewest processes within FILL_MARGIN of the best rate that memory and CPUs
allow, and a larger stacked pack only where it was measured faster still.
Measurements are remembered per device, model, batch and pack (`gpu-fill.json` in the cache folder).

Workers are separate Python processes (`python -m kdtune.engine.fill`), not forks: CUDA cannot be forked, and
a spawned multiprocessing child would re-import whatever program started it (a Ray worker, a notebook).
Nothing here knows of Ray.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# More processes (or a larger stack) must give this much more aggregate images/s to be worth their memory,
# CPUs and each trial's slower progress: a closer race is within the measurement's noise.
FILL_MARGIN = 1.10
# Trials sharing a GPU may fill this share of the memory free when the sweep starts (the rest is headroom for
# the allocator's fragmentation and for anything else on the device).
MEMORY_SHARE = 0.8
PROCESS_COUNTS = (1, 2, 4, 8, 16)
STACK_FACTORS = (2, 4)  # stacked packs of this many times a trial's students
MAX_STACK = 64
PROBE_STEPS = 20
WORKER_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Probe:
    """What a worker trains: the experiment's student on synthetic data of its shape (the speed of a step does
    not depend on the pixels), `members` students per process, KD from random logits (the loss's kernels)."""

    model: str
    classes: int
    image_size: tuple[int, int]
    batch_size: int
    precision: str
    members: int
    mode: str = "loop"  # the pack's mode: "loop", or "stack" for a stacked pack
    steps: int = PROBE_STEPS
    threads: int = 1
    recipe: str = "strong"
    sys_path: tuple[str, ...] = ()  # the parent's import path, so that a user's model module imports

    def key(self, device_label: str) -> str:
        return (f"{device_label}|torch {torch.__version__}|{self.model}|{self.classes}x{self.image_size[0]}x"
                f"{self.image_size[1]}|batch {self.batch_size}|{self.precision}|{self.members} members|{self.mode}|"
                f"threads {self.threads}")


@dataclass(frozen=True)
class Measured:
    """k processes side by side: their summed student-images/s and the device memory each held (None on a CPU)."""

    processes: int
    images_per_s: float
    bytes_per_process: int | None


@dataclass(frozen=True)
class FillChoice:
    trials_per_gpu: int
    pack: int | None  # students per trial when a stacked pack was chosen; None: a configuration's seeds
    processes: list[dict]  # Measured, as dicts
    stacks: list[dict]  # Measured of one process with a stack of `members` students, as {"members", ...}
    why: str

    @property
    def gpus_per_trial(self) -> float:
        return 1.0 / self.trials_per_gpu

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- choosing


def choose_fill(processes: list[Measured], stacks: dict[int, Measured], limit: int, limit_why: str) -> FillChoice:
    """The fewest processes per GPU within FILL_MARGIN of the best measured (each step up must pay), at most
    `limit` (memory, CPUs and trials: `limit_why` says which bound); then a stack of more students where one
    process stacking them beat that by FILL_MARGIN too."""
    allowed = [m for m in processes if m.processes <= limit]
    best = allowed[0]
    for measured in allowed[1:]:
        if measured.images_per_s >= FILL_MARGIN * best.images_per_s:
            best = measured
    rates = ", ".join(f"{m.processes}: {m.images_per_s:,.0f}" for m in processes)
    why = (f"students' images/s summed over processes sharing one GPU, measured side by side ({rates}); "
           f"{best.processes} per GPU")
    if any(m.processes > best.processes for m in allowed):
        why += f" (more gained under {FILL_MARGIN - 1:.0%})"
    elif best.processes == limit:
        why += f" (at most {limit}: {limit_why})"
    if best.bytes_per_process:
        why += f", {best.bytes_per_process / 2**30:.1f} GiB of device memory each"
    pack = None
    if stacks:
        top = max(stacks.values(), key=lambda m: m.images_per_s)
        said = ", ".join(f"{n} students: {m.images_per_s:,.0f}" for n, m in sorted(stacks.items()))
        if top.images_per_s >= FILL_MARGIN * best.images_per_s:
            pack = next(n for n, m in stacks.items() if m is top)
            why += f"; one process stacking more students measured faster ({said}): packs of {pack}, one per GPU"
            best = Measured(1, top.images_per_s, top.bytes_per_process)
        else:
            why += f"; a stack of more students in one process was not faster ({said})"
    trials = 1 if pack else best.processes
    return FillChoice(trials, pack, [asdict(m) for m in processes],
                      [{"members": n, **asdict(m)} for n, m in sorted(stacks.items())], why)


def process_limit(bytes_per_process: int | None, free_bytes: int | None, cpus_per_gpu: float, cpus_per_trial: float,
                  trials: int) -> tuple[int, str]:
    """(the most trials one GPU can hold at once, which bound that is)."""
    bounds = [(max(1, math.floor(cpus_per_gpu / cpus_per_trial)), f"{cpus_per_gpu:g} CPUs per GPU at "
               f"{cpus_per_trial:g} per trial"),
              (max(1, trials), f"the phase has {trials} trials")]
    if bytes_per_process and free_bytes:
        bounds.append((max(1, math.floor(MEMORY_SHARE * free_bytes / bytes_per_process)),
                       f"device memory: {MEMORY_SHARE:.0%} of {free_bytes / 2**30:.0f} GiB free"))
    return min(bounds)


# ----------------------------------------------------------------------------- measuring


def measure_processes(probe: Probe, device: torch.device, count: int) -> Measured:
    """`count` workers, each training `probe` on `device`, timed side by side from a common start."""
    results, used = _run_workers(probe, device, count)
    seconds = max(r["seconds"] for r in results)  # all started together: the slowest closes the window
    per_process = None if used is None else int(used / count)
    return Measured(count, round(sum(r["images"] for r in results) / seconds, 1), per_process)


def measure_fill(probe: Probe, device: torch.device, limit_of, stack_sizes: tuple[int, ...] = (),
                 counts: tuple[int, ...] = PROCESS_COUNTS, extra_bytes: int = 0,
                 remember: Path | None = None) -> tuple[list[Measured], dict[int, Measured]]:
    """Processes for each of `counts` in turn, stopping where the bound `limit_of(bytes_per_process)` says no
    more fit or where doubling gained under FILL_MARGIN; then one process per stack size.  Each measurement is
    remembered (`remember`, default gpu-fill.json in the cache folder) under its probe's key."""
    from kdtune.engine.data import cache_dir
    from kdtune.engine.device import device_name
    from kdtune.engine.speed import remembered

    path = remember or cache_dir() / "gpu-fill.json"
    label = f"{device_name(device)}|{device.type}"

    def one(p: Probe, count: int) -> Measured:
        value, _ = remembered(path, f"{p.key(label)}|{count} processes",
                              lambda: asdict(measure_processes(p, device, count)))
        measured = Measured(**value)
        if measured.bytes_per_process is None:
            return measured
        return Measured(count, measured.images_per_s, measured.bytes_per_process + extra_bytes)

    measured: list[Measured] = []
    for count in counts:
        if measured:
            limit, _ = limit_of(measured[0].bytes_per_process)
            if count > limit:
                break
            if len(measured) > 1 and measured[-1].images_per_s < FILL_MARGIN * measured[-2].images_per_s:
                break  # the last doubling already stopped paying
        measured.append(one(probe, count))
    stacks = {}
    for size in stack_sizes:
        stacks[size] = one(Probe(**{**asdict(probe), "members": size, "mode": "stack"}), 1)
    return measured, stacks


def _run_workers(probe: Probe, device: torch.device, count: int) -> tuple[list[dict], int | None]:
    """Start `count` workers; when every one has warmed up, release them together; when every one has finished,
    read the device's used memory (all of them still holding theirs), then let them exit."""
    with tempfile.TemporaryDirectory(prefix="kdtune-fill-") as folder:
        folder = Path(folder)
        spec = {**asdict(probe), "device": str(device), "folder": str(folder)}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(list(probe.sys_path) + sys.path)}
        before = _used_bytes(device)
        logs = [open(folder / f"stderr-{i}", "w") for i in range(count)]  # a pipe could fill and block a worker
        workers = [subprocess.Popen([sys.executable, "-m", "kdtune.engine.fill", json.dumps({**spec, "index": i})],
                                    env=env, stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(count)]
        try:
            _wait_for(folder, "ready", count, workers)
            (folder / "go").touch()
            _wait_for(folder, "done", count, workers)
            after = _used_bytes(device)
            (folder / "exit").touch()
            for worker in workers:
                worker.wait(timeout=WORKER_TIMEOUT_S)
            results = [json.loads((folder / f"done-{i}").read_text()) for i in range(count)]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            for log in logs:
                log.close()
    used = None if before is None or after is None else max(0, after - before)
    return results, used


def _wait_for(folder: Path, stage: str, count: int, workers: list) -> None:
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while sum((folder / f"{stage}-{i}").is_file() for i in range(count)) < count:
        failed = [i for i, w in enumerate(workers) if w.poll() not in (None, 0)]
        if failed:
            detail = (folder / f"stderr-{failed[0]}").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"a GPU-fill measurement worker failed: {detail[-1] if detail else 'no message'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"GPU-fill measurement workers did not reach {stage!r} in {WORKER_TIMEOUT_S:.0f} s")
        time.sleep(0.01)


def _used_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return total - free


def free_bytes(device: torch.device) -> int | None:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


# ----------------------------------------------------------------------------- the worker


class _RandomTeacher:
    """Fixed random logits as the teacher signal: the KD loss's kernels, without a teacher to train."""

    def __init__(self, n: int, rows: int, classes: int, device: torch.device):
        g = torch.Generator().manual_seed(0)
        self.train = torch.randn(n, classes, generator=g).to(device)
        self.val_logits = torch.randn(rows, classes, generator=g).to(device)
        self.test_logits = self.val_logits

    def train_logits(self, epoch, idx, views):
        return self.train[idx]

    def true_class_probability(self, labels, temperature, epochs):
        return 0.5


def _synthetic(probe: Probe):
    from kdtune.engine.data import Splits

    g = torch.Generator().manual_seed(0)
    n = probe.batch_size * probe.steps
    rows = probe.batch_size

    def images(count):
        return torch.randint(0, 256, (count, 3, *probe.image_size), dtype=torch.uint8, generator=g)

    def labels(count):
        return torch.randint(0, probe.classes, (count,), generator=g)

    return Splits(images(n), labels(n), images(rows), labels(rows), images(rows), labels(rows),
                  tuple(f"c{i}" for i in range(probe.classes)), key="gpu-fill-probe",
                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _worker(spec: dict) -> None:
    from kdtune.engine.config import RunConfig
    from kdtune.engine.device import configure
    from kdtune.engine.pack import train_pack

    folder, index = Path(spec.pop("folder")), spec.pop("index")
    device = torch.device(spec.pop("device"))
    probe = Probe(**{**spec, "image_size": tuple(spec["image_size"]), "sys_path": tuple(spec["sys_path"])})
    torch.set_num_threads(max(1, probe.threads))
    configure(device)
    splits = _synthetic(probe)
    teacher = _RandomTeacher(len(splits.train_labels), probe.batch_size, probe.classes, device)
    configs = [RunConfig(model=probe.model, epochs=1, recipe=probe.recipe, alpha=0.5, temperature=4.0, seed=s,
                         batch_size=probe.batch_size, precision=probe.precision) for s in range(probe.members)]

    def epoch():
        train_pack(configs, splits, device, teacher, mode=probe.mode)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    epoch()  # warm-up: the CUDA context, cuDNN's kernel choice, the allocator's pools
    (folder / f"ready-{index}").touch()
    while not (folder / "go").is_file():
        time.sleep(0.001)
    started = time.perf_counter()
    epoch()
    seconds = time.perf_counter() - started
    images = len(splits.train_labels) * probe.members
    (folder / f"done-{index}.tmp").write_text(json.dumps({"images": images, "seconds": seconds}))
    (folder / f"done-{index}.tmp").rename(folder / f"done-{index}")
    while not (folder / "exit").is_file():  # hold the memory until the parent has read it
        time.sleep(0.01)


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
