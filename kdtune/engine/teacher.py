"""The teacher store and the exact, temperature-free teacher-logit cache.

Store: a teacher is trained once per (architecture, recipe, epochs, data
splits, seed, ...) and kept under `<store>/<arch>-<key>/` (`model.pt` +
`meta.json`).  An entry is built in a temporary folder and renamed into place,
so a crash never leaves half an entry that a later run would load.  A teacher
that cannot be stored (a full disk) is kept in the system's temporary folder
(`kept_path`), and the next run stores it from there instead of training it again.

Cache: because augmentation is a pure function of (aug_seed, epoch, image),
every view a student will see is known in advance.  The teacher's raw logits
(not probabilities: T stays free) for every epoch's views, and for the
un-augmented validation and test images, are computed once in fp16 and kept
next to the teacher checkpoint, one file per epoch, each written atomically.
Every distillation run with any T and alpha then reads logits instead of
running the teacher.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdtune.engine.atomic import remove_stale_temps, save_json, save_torch
from kdtune.engine.checkpoint import file_digest, load_model, save_model
from kdtune.engine.config import RunConfig
from kdtune.engine.data import Splits, augmentation_params
from kdtune.engine.device import autocast, prepare, uses_bf16
from kdtune.engine.errors import UserError, first_line
from kdtune.engine.losses import true_class_probability
from kdtune.engine.metrics import classification_metrics, soft_target_profile
from kdtune.engine.models import count_parameters, create_model, storage_name
from kdtune.engine.progress import Progress, progress_bar
from kdtune.engine.train import predict, train, training_views

# Teacher inference batch: large on a GPU; on the CPU small batches stay in cache and run ~1.5x faster.
CACHE_BATCH = {"cpu": 64, "cuda": 8192}


# ----------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Teacher:
    model: nn.Module  # eval mode, on CPU
    meta: dict  # config, data, accuracies, training time
    path: Path  # the checkpoint file


# A teacher is trained without distillation: these never change its weights, and leaving them out keeps the
# names of teachers stored before they existed.
DISTILLATION_FIELDS = ("temperature", "alpha", "method", "ctkd_range", "ctkd_ramp_epochs", "dkd_beta",
                       "dkd_warmup_epochs")


def teacher_key(config: RunConfig, splits: Splits) -> str:
    """Names a teacher by everything that decides its weights."""
    fields = {k: v for k, v in config.to_dict().items() if k not in DISTILLATION_FIELDS}
    return hashlib.sha256(json.dumps([fields, splits.key], sort_keys=True).encode()).hexdigest()[:12]


def default_store() -> Path:
    return Path(os.environ.get("KDTUNE_TEACHER_STORE") or "results/teachers")


def store_entry(config: RunConfig, splits: Splits, store: str | os.PathLike | None = None) -> Path:
    return Path(store or default_store()) / f"{storage_name(config.model)}-{teacher_key(config, splits)}"


def find_teacher(config: RunConfig, splits: Splits, store: str | os.PathLike | None = None) -> Teacher | None:
    """The stored teacher for this config and data, or None.  Only complete (renamed-into-place) entries count."""
    path = store_entry(config, splits, store) / "model.pt"
    remove_stale_temps(path.parent.parent)  # entries interrupted while being built
    if not path.is_file():
        return None
    model, meta = load_model(path, expected_arch=config.model, num_classes=splits.num_classes)
    return Teacher(model, meta, path)


def add_to_store(entry: Path, model: nn.Module, meta: dict) -> Teacher:
    """Write model.pt and meta.json into a temporary folder, then rename it to `entry` in one step."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    # Named as atomic.py names temporary files, so that `remove_stale_temps` removes it if this process is killed.
    building = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".building-{entry.name}.", suffix=".tmp"))
    try:
        save_model(building / "model.pt", model, meta["config"]["model"], meta, meta["num_classes"])
        save_json(building / "meta.json", meta)
        try:
            building.rename(entry)
        except OSError:
            if (entry / "model.pt").is_file():  # a concurrent run got there first
                pass
            elif entry.is_dir():  # an entry without model.pt (deleted by hand) is never loaded: replace it
                shutil.rmtree(entry)
                building.rename(entry)
            else:
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return Teacher(model, meta, entry / "model.pt")


def obtain_teacher(
    config: RunConfig,
    splits: Splits,
    device: torch.device,
    store: str | os.PathLike | None = None,
    teacher_path: str | os.PathLike | None = None,
    progress: Progress = False,
    allow_foreign: bool = False,
) -> Teacher:
    """Load the teacher from `teacher_path` or the store; train and save it first (here, on `device`) when it is
    missing: `prepare_teacher` without a cache.

    A `teacher_path` checkpoint must have been trained on these very splits (see `load_teacher_file`)."""
    teacher, _ = prepare_teacher(config, splits, store, config.aug_seed, None, cache_mode(config.precision, device),
                                 teacher_path=teacher_path, allow_foreign=allow_foreign, train_missing_path=True,
                                 device=device, progress=progress)
    return teacher


def load_teacher_file(path: str | os.PathLike, config: RunConfig, splits: Splits, allow_foreign: bool = False) -> Teacher:
    """A teacher checkpoint given by path, refused unless it records these data splits: a teacher trained on
    other splits may have seen this run's validation (or test) images, and every number after it would leak.
    With `allow_foreign` it is used anyway and its metadata says so (`foreign_data`)."""
    path = Path(path)
    model, meta = load_model(path, expected_arch=config.model, num_classes=splits.num_classes)
    recorded = meta.get("data_key")
    if recorded != splits.key:
        if not allow_foreign:
            what = "records no data splits" if recorded is None else f"was trained on data splits {recorded}"
            raise UserError(
                f"teacher {path} {what}, not this run's {splits.key}: it may have seen this run's validation or test "
                f"images; train the teacher on the same data, --val-size and --train-subset, or pass "
                f"--allow-foreign-teacher to use it anyway"
            )
        meta = {**meta, "foreign_data": {"recorded_splits": recorded, "run_splits": splits.key}}
    return Teacher(model, meta, path)


def train_teacher(config: RunConfig, splits: Splits, device, progress: Progress = False) -> tuple[nn.Module, dict]:
    """Train a teacher from scratch; return it (eval mode, CPU) and its metadata."""
    started = time.time()
    # Nothing stops a teacher early: it is evaluated once, after its last epoch.
    result = train(config, splits, device, progress=progress, desc=f"teacher {config.model}", val_every=config.epochs)
    meta = {
        "config": config.to_dict(),
        "data_key": splits.key,
        "num_classes": splits.num_classes,
        "parameters": count_parameters(result.model),
        "val_acc": result.final["val_acc"],
        "test_acc": result.final["test_acc"],
        "train_seconds": time.time() - started,
        "history": result.history,
    }
    return result.model.cpu().eval(), meta


# ----------------------------------------------------------------------------- the logit cache


@dataclass(frozen=True)
class LogitCache:
    """Raw teacher logits in fp16: plain tensors, shareable read-only through Ray's object store."""

    train: torch.Tensor  # (epochs, n_train, classes): the view of image i in epoch e is row [e, i]
    val: torch.Tensor  # (n_val, classes), un-augmented
    test: torch.Tensor  # (n_test, classes), un-augmented
    aug_seed: int
    splits_key: str


def cache_folder(teacher_path: Path, splits: Splits, aug_seed: int, precision: str) -> Path:
    # The checkpoint's digest is in the name, so a teacher file overwritten in place never meets a stale cache.
    name = f"{file_digest(teacher_path)[:12]}-{splits.key}-aug{aug_seed}-{precision}"
    return teacher_path.parent / f"{teacher_path.stem}-logits" / name


def cache_names(epochs: int) -> list:
    """The entries of a full cache: "val", "test" and each epoch number."""
    return ["val", "test", *range(epochs)]


def cache_entries(teacher: Teacher, splits: Splits, aug_seed: int, epochs: int, mode: str) -> dict:
    """{name: file} of a full cache (see `cache_names`)."""
    folder = cache_folder(teacher.path, splits, aug_seed, mode)
    return {name: folder / (f"{name}.pt" if isinstance(name, str) else f"epoch-{name:04d}.pt")
            for name in cache_names(epochs)}


def load_cached(files: dict, splits: Splits) -> dict:
    """{name: logits} for the entries present and sound; damaged or missing ones are left out (and rebuilt)."""
    rows = {"val": len(splits.val_labels), "test": len(splits.test_labels)}
    loaded = {name: _load_logits(path, (rows.get(name, len(splits.train_labels)), splits.num_classes))
              for name, path in files.items()}
    return {name: value for name, value in loaded.items() if value is not None}


def compute_logits(model: nn.Module, splits: Splits, names: list, aug_seed: int, device, precision: str,
                   progress: Progress = False) -> dict:
    """{name: fp16 CPU logits} for "val", "test" and epoch numbers, computed with `model` in eval mode."""
    model = prepare(model, device).eval()
    bar = progress_bar(progress if names else False, len(names), "caching teacher logits", unit="pass")
    out = {}
    for name in names:
        if name in ("val", "test"):
            logits = predict(model, splits.val_images if name == "val" else splits.test_images, splits, device,
                             precision)
        else:
            logits = epoch_logits(model, splits, aug_seed, name, device, precision)
        out[name] = logits.half().cpu()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.cpu()
    return out


def assemble(loaded: dict, epochs: int, aug_seed: int, splits: Splits) -> LogitCache:
    return LogitCache(
        train=torch.stack([loaded[e] for e in range(epochs)]),
        val=loaded["val"],
        test=loaded["test"],
        aug_seed=aug_seed,
        splits_key=splits.key,
    )


def cache_mode(precision: str, device: torch.device) -> str:
    return "bf16" if uses_bf16(precision, device) else "fp32"


def teacher_logits(
    teacher: Teacher,
    splits: Splits,
    aug_seed: int,
    epochs: int,
    device: torch.device,
    precision: str = "auto",
    progress: Progress = False,
) -> LogitCache:
    """The cache for `epochs` epochs of `aug_seed`'s views: loaded where present, computed here (on `device`)
    where missing: `prepare_teacher` for a teacher already at hand."""
    _, cache = prepare_teacher(None, splits, None, aug_seed, epochs, cache_mode(precision, device), teacher=teacher,
                               device=device, progress=progress)
    return cache


# ----------------------------------------------------------------------------- preparation: the whole sequence, once

# run_heavy(config, model, names) -> (trained, meta, logits): train a teacher for `config` when `model` is None
# (`trained`, `meta`: it, eval mode on the CPU, and its metadata; else both None), then compute the cache entries
# `names` with it or with `model` ({name: fp16 CPU logits}).  `in_process` runs it here; kdtune.sweep.runner as a
# Ray task (through `heavy_part_from_state`).
HeavyRunner = Callable[[RunConfig, "nn.Module | None", list], "tuple[nn.Module | None, dict | None, dict]"]


def prepare_teacher(
    config: RunConfig | None,
    splits: Splits,
    store: str | os.PathLike | None,
    aug_seed: int,
    epochs: int | None,
    mode: str,
    *,
    teacher: Teacher | None = None,
    teacher_path: str | os.PathLike | None = None,
    allow_foreign: bool = False,
    train_missing_path: bool = False,
    recorded: str | None = None,
    run_heavy: HeavyRunner | None = None,
    device: torch.device | None = None,
    progress: Progress = False,
) -> tuple[Teacher, LogitCache | None]:
    """The teacher and its complete logit cache for `epochs` epochs of `aug_seed`'s views, in `mode` ("fp32" or
    "bf16", see `cache_mode`).

    The teacher is `teacher` when given, else the checkpoint at `teacher_path` (refused unless trained on these
    splits, see `load_teacher_file`; when it does not exist it is trained and saved there with
    `train_missing_path`, else refused), else the store's entry for `config`, trained and added when missing.
    `recorded` is the checkpoint of the teacher a resumed experiment already used: it is never retrained, so
    its absence from the store is refused.  Cache entries are loaded where present and sound; the heavy part
    (training the teacher, computing the missing entries) goes through `run_heavy`, by default `in_process` on
    `device` (the CPU when None), and is not run at all when nothing is missing.  `epochs` None: the teacher
    alone (the cache is None)."""
    if teacher is None:
        teacher = locate_teacher(config, splits, store, teacher_path, allow_foreign, train_missing_path)
    if teacher is None and kept_path(config, splits).is_file():
        teacher = _adopt_kept(config, splits, store, teacher_path)
    if teacher is None and recorded is not None:
        raise UserError(f"the experiment's teacher ({recorded}) is not in the teacher store {store}; "
                        f"pass --teacher-store with the store that holds it (it is never retrained silently)")
    loaded = {}
    if teacher is not None and epochs is not None:
        files = cache_entries(teacher, splits, aug_seed, epochs, mode)
        remove_stale_temps(files["val"].parent)  # epochs interrupted while being written
        loaded = load_cached(files, splits)
    missing = [] if epochs is None else [name for name in cache_names(epochs) if name not in loaded]
    if teacher is None or missing:
        run_heavy = run_heavy or in_process(splits, aug_seed, mode, device or torch.device("cpu"), progress)
        trained, meta, logits = run_heavy(config, None if teacher is None else teacher.model, missing)
        if teacher is None:
            teacher = _keep(config, splits, store, teacher_path, trained, meta)
        if logits:
            files = cache_entries(teacher, splits, aug_seed, epochs, mode)
            for name, value in logits.items():
                try:
                    save_torch(files[name], value)
                except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
                    raise UserError(
                        f"could not write the teacher-logit cache in {files[name].parent} ({first_line(error)}); "
                        f"the {len(loaded)} entries there are kept (one per epoch): free space and run again "
                        f"(or --resume), which computes only the missing ones") from None
                loaded[name] = value
    return teacher, (None if epochs is None else assemble(loaded, epochs, aug_seed, splits))


def heavy_part(config: RunConfig, splits: Splits, model: nn.Module | None, names: list, aug_seed: int, device,
               mode: str, progress: Progress = False) -> tuple[nn.Module | None, dict | None, dict]:
    """What needs a GPU or a whole node, run on `device`: see `HeavyRunner`."""
    trained, meta = (None, None) if model is not None else train_teacher(config, splits, device, progress)
    model = trained if model is None else model
    started = time.time()
    logits = compute_logits(model, splits, names, aug_seed, device, mode, progress) if names else {}
    if meta is not None:
        meta["cache_seconds"] = time.time() - started  # the cache built with it (benchmarks/sweep_speed.py reads it)
    return trained, meta, logits


def in_process(splits: Splits, aug_seed: int, mode: str, device, progress: Progress = False) -> HeavyRunner:
    """The runner of the heavy part in this process, on `device`."""

    def run(config: RunConfig, model: nn.Module | None, names: list):
        return heavy_part(config, splits, model, names, aug_seed, device, mode, progress)

    return run


def heavy_part_from_state(config: RunConfig, splits: Splits, state: dict | None, names: list, aug_seed: int, device,
                          mode: str, progress: Progress = False) -> tuple[dict | None, dict | None, dict]:
    """`heavy_part` with plain values in and out, for another process (a Ray task): the teacher's state dict
    (None: train one), and the trained teacher's state dict (rebuild it with `model_from_state`)."""
    model = None if state is None else model_from_state(config, splits.num_classes, state)
    trained, meta, logits = heavy_part(config, splits, model, names, aug_seed, device, mode, progress)
    return (None if trained is None else {k: v.cpu() for k, v in trained.state_dict().items()}), meta, logits


def model_from_state(config: RunConfig, num_classes: int, state: dict) -> nn.Module:
    """`config`'s model, eval mode on the CPU, with the weights of `state`."""
    model = create_model(config.model, num_classes)
    model.load_state_dict(state)
    return model.eval()


def locate_teacher(config: RunConfig, splits: Splits, store, teacher_path=None, allow_foreign: bool = False,
                   train_missing_path: bool = False) -> Teacher | None:
    """The teacher at `teacher_path` or in the store; None where it is still to be trained."""
    if teacher_path is None:
        return find_teacher(config, splits, store)
    if Path(teacher_path).exists() or not train_missing_path:
        return load_teacher_file(teacher_path, config, splits, allow_foreign)  # refuses a missing file
    return None


def kept_path(config: RunConfig, splits: Splits) -> Path:
    """Where a trained teacher is kept when its store entry or --teacher-path cannot be written (a full disk):
    the system's temporary folder, often another file system, named by the teacher's key."""
    return Path(tempfile.gettempdir()) / "kdtune-teachers" / f"{storage_name(config.model)}-{teacher_key(config, splits)}.pt"


def _keep(config: RunConfig, splits: Splits, store, teacher_path, model: nn.Module, meta: dict,
          adopting: bool = False) -> Teacher:
    """A newly trained teacher, saved at `teacher_path`, else added to the store; kept at `kept_path` (and
    refused in one line) when that cannot be written, so that its training is not lost.  `adopting`: the
    teacher comes from `kept_path` already."""
    where = store_entry(config, splits, store) if teacher_path is None else Path(teacher_path)
    try:
        if teacher_path is None:
            return add_to_store(where, model, meta)
        save_model(where, model, config.model, meta, splits.num_classes)
        return Teacher(model, meta, where)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        failed = f"could not write the trained teacher to {where} ({first_line(error, 120)})"
    kept = kept_path(config, splits)
    if adopting:
        raise UserError(f"{failed}; it is kept at {kept}: free space and run again (or --resume) to store it "
                        f"from there, or pass --teacher-path {kept}")
    try:
        save_model(kept, model, config.model, meta, splits.num_classes)
    except (OSError, RuntimeError) as error:
        raise UserError(f"{failed}, nor to {kept} ({first_line(error, 120)}): free space and run again") from None
    raise UserError(f"{failed}; it is kept at {kept}: free space and run again (or --resume), which stores it "
                    f"from there instead of training it again, or pass --teacher-path {kept}")


def _adopt_kept(config: RunConfig, splits: Splits, store, teacher_path) -> Teacher:
    """The teacher a run could not store (see `_keep`), stored now where it belongs, instead of trained again."""
    kept = kept_path(config, splits)
    model, meta = load_model(kept, expected_arch=config.model, num_classes=splits.num_classes)
    teacher = _keep(config, splits, store, teacher_path, model, meta, adopting=True)
    kept.unlink(missing_ok=True)
    return teacher


@torch.no_grad()
def epoch_logits(model, splits: Splits, aug_seed: int, epoch: int, device, precision: str) -> torch.Tensor:
    """Teacher logits (n_train, classes) for exactly the views `kdtune.engine.train` draws in `epoch`."""
    n = len(splits.train_images)
    params = augmentation_params(n, aug_seed, epoch, splits.image_size)
    batch = CACHE_BATCH.get(device.type, 1024)
    out = []
    with autocast(precision, device):
        for start in range(0, n, batch):
            images = splits.train_images[start : start + batch].to(device)
            views = training_views(images, params[start : start + batch], splits)
            out.append(model(views).float())
    return torch.cat(out)


def _load_logits(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached tensor, or None where it is missing or damaged (then it is rebuilt, never trusted)."""
    if not path.is_file():
        return None
    try:
        logits = torch.load(path, weights_only=True)
    except Exception:
        return None
    ok = isinstance(logits, torch.Tensor) and logits.dtype == torch.float16 and logits.dim() == 2
    return logits if ok and tuple(logits.shape) == shape else None


# A cache larger than this fraction of the device's memory stays on the host (see CachedTeacher).
DEVICE_CACHE_FRACTION = 0.1


class CachedTeacher:
    """The teacher signal of `kdtune.engine.train` read from a `LogitCache` instead of a network.

    The cache is copied to the device whole, unless it is larger than DEVICE_CACHE_FRACTION of the device's
    memory (CIFAR-100 over 240 epochs is 2 GB, and every trial process holds its own copy) or `on_host` says
    so: then it stays where it is in host memory (shared between the trials of a node through Ray's object
    store), and each epoch's slice is copied to the device when the epoch first asks for it, through one
    epoch-sized pinned buffer, asynchronously.  Pinning the whole cache instead would give every trial its
    own page-locked copy, which PyTorch's pinned allocator rounds up to a power of two."""

    def __init__(self, cache: LogitCache, splits: Splits, device: torch.device, on_host: bool | None = None):
        if cache.splits_key != splits.key:
            raise UserError(f"teacher-logit cache is for data splits {cache.splits_key}, not {splits.key}")
        self.device = device
        self.on_host = stays_on_host(cache.train, device) if on_host is None else on_host
        self.train = cache.train if self.on_host else cache.train.to(device)
        self._epoch: tuple[int, torch.Tensor] | None = None  # the host path's slice on the device
        self._staging = None  # the host path's buffer: one epoch's slice, pinned on CUDA
        self._copied = None  # on CUDA, the event after the last copy out of the buffer
        self.val_logits = cache.val.to(device).float()
        self.test_logits = cache.test.to(device).float()
        self.aug_seed = cache.aug_seed

    def train_logits(self, epoch: int, idx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        assert epoch < len(self.train), f"no cached teacher logits for epoch {epoch}"
        if not self.on_host:
            return self.train[epoch, idx].float()
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self._to_device(self.train[epoch]))
        return self._epoch[1][idx].float()

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """`host` on the device by way of the staging buffer; on a CPU the buffer itself (no later epoch reads
        an earlier one's slice)."""
        cuda = self.device.type == "cuda"
        if self._staging is None:
            self._staging = torch.empty(host.shape, dtype=host.dtype, pin_memory=cuda)
        if self._copied is not None:
            self._copied.synchronize()  # the previous epoch's copy out of the buffer has finished
        self._staging.copy_(host)
        on_device = self._staging.to(self.device, non_blocking=True)
        if cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()
        return on_device

    def true_class_probability(self, labels: torch.Tensor, temperature: float, epochs: int) -> float:
        """The mean softened true-class probability over the first `epochs` epochs' cached views."""
        labels = labels.to(self.device)
        return sum(true_class_probability(self.train[e].to(self.device), labels, temperature).mean().item()
                   for e in range(epochs)) / epochs


def stays_on_host(train_logits: torch.Tensor, device: torch.device) -> bool:
    """Whether a cache's training logits are too large to copy whole onto `device` (see CachedTeacher)."""
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return train_logits.numel() * train_logits.element_size() > DEVICE_CACHE_FRACTION * total



# ----------------------------------------------------------------------------- the teacher card

# The dense temperature range a teacher card profiles its soft targets over (the swept values are added).
CARD_TEMPERATURES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)


def teacher_card(teacher: Teacher, cache: LogitCache, splits: Splits, swept: list[float]) -> dict:
    """What a reader needs to judge a teacher: its accuracy, NLL and ECE on validation and test (from the
    cache's un-augmented logits), its checkpoint digest and training settings, and, at each temperature of
    CARD_TEMPERATURES and `swept`, the profile of its softened targets over every cached training view
    (kdtune.engine.metrics.soft_target_profile)."""
    temperatures = sorted({float(t) for t in (*CARD_TEMPERATURES, *swept)})
    profile = []
    for temperature in temperatures:
        per_epoch = [soft_target_profile(cache.train[e], splits.train_labels, temperature)
                     for e in range(len(cache.train))]  # every epoch holds all images: the mean of means is exact
        profile.append({"temperature": temperature, "swept": temperature in {float(t) for t in swept},
                        **{k: sum(p[k] for p in per_epoch) / len(per_epoch) for k in per_epoch[0]}})
    meta = teacher.meta
    return {
        "model": meta.get("config", {}).get("model"), "path": str(teacher.path),
        "sha256": file_digest(teacher.path), "parameters": meta.get("parameters"),
        "training": meta.get("config"), "train_seconds": meta.get("train_seconds"),
        "data_key": meta.get("data_key"), "classes": splits.num_classes,
        **classification_metrics(cache.val, splits.val_labels, "val"),
        **classification_metrics(cache.test, splits.test_labels, "test"),
        "views": {"epochs": len(cache.train), "images": len(splits.train_labels), "aug_seed": cache.aug_seed},
        "profile": profile,
    }
