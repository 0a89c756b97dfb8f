"""CIFAR-10 as uint8 tensors: loading, the decode cache, splits and batch augmentation.

The whole dataset lives in memory as one uint8 tensor (N, 3, 32, 32) with
int64 labels, as in airbench.  Two sources:

* torchvision's CIFAR-10 under a data dir (downloaded when missing);
* any image folder `train/<class>/*` + `test/<class>/*` (class index = sorted
  folder name), e.g. `shared/datasets/cifar10-jpeg`.

Either is decoded once and cached outside the data dir (which may be
read-only), so later runs load in a fraction of a second.

Augmentation (random crop with 4-pixel zero padding + horizontal flip) runs on
whole batches on the model's device.  The view of training image i in epoch e
is a pure function of (aug_seed, epoch, i): this is what lets the teacher-logit
cache replay exactly the views a live teacher would have seen.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdtune.atomic import save_torch
from kdtune.errors import UserError

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
PAD = 4
IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm"}
CACHE_FORMAT = 1


@dataclass(frozen=True)
class Dataset:
    """A whole dataset in memory: images (N, 3, 32, 32) uint8, labels (N,) int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    fingerprint: str  # content hash: names this exact data in teacher and cache keys


@dataclass(frozen=True)
class Splits:
    """Train / validation (carved from train) / test tensors, and how they were made."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    key: str  # data fingerprint + split parameters: names these exact splits

    def to(self, device: torch.device) -> "Splits":
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return Splits(**moved)


# ----------------------------------------------------------------------------- locating data


def resolve_data_dir(cli_value: str | None) -> Path:
    """--data-dir, else $KDTUNE_DATA_DIR, else ./data."""
    return Path(cli_value or os.environ.get("KDTUNE_DATA_DIR") or "data").expanduser()


def cache_dir() -> Path:
    """Where decoded datasets are cached: $KDTUNE_CACHE_DIR, else ~/.cache/kdtune."""
    return Path(os.environ.get("KDTUNE_CACHE_DIR") or Path.home() / ".cache" / "kdtune").expanduser()


def is_image_folder(data_dir: Path) -> bool:
    return (data_dir / "train").is_dir() and (data_dir / "test").is_dir()


def load_dataset(data_dir: str | os.PathLike, download: bool = True) -> Dataset:
    """Load CIFAR-10 (or an image folder of the same layout) from `data_dir`, through the decode cache."""
    data_dir = Path(data_dir).expanduser()
    if is_image_folder(data_dir):
        decode = lambda: _decode_image_folder(data_dir, _image_folder_listing(data_dir))  # noqa: E731
        stamp = _image_folder_stamp(data_dir)
    else:
        batches = data_dir / "cifar-10-batches-py"
        if not batches.is_dir():
            _download_cifar10(data_dir, download)
        decode = lambda: _decode_torchvision(data_dir)  # noqa: E731
        stamp = [(p.name, *_stat(p)) for p in sorted(batches.iterdir())]
    key = _digest([CACHE_FORMAT, str(data_dir.resolve()), stamp])
    cached = cache_dir() / f"dataset-{key[:20]}.pt"
    if cached.exists():
        try:
            # mmap: the tensors page in as they are used, so a cache hit costs almost nothing.
            return Dataset(**torch.load(cached, weights_only=True, mmap=True))
        except Exception:
            pass  # a cache from an interrupted or older run: decode again and overwrite it
    dataset = decode()
    try:
        save_torch(cached, dataset.__dict__)
    except OSError:
        pass  # an unwritable cache only costs the next run a decode
    return dataset


def _image_folder_stamp(data_dir: Path) -> list:
    """A cheap identity of an image folder: each class folder's name, mtime and entry count.

    Stat-ing 60,000 files would cost most of a second on every run; adding, removing
    or renaming a file changes its folder's mtime.  An in-place edit that keeps the
    name is not seen: delete the cache ($KDTUNE_CACHE_DIR) to force a decode.
    """
    stamp = []
    for split in ("train", "test"):
        with os.scandir(data_dir / split) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir():
                    stamp.append((split, entry.name, entry.stat().st_mtime_ns, len(os.listdir(entry.path))))
    return stamp


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _digest(obj) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _make_dataset(train_x, train_y, test_x, test_y, classes) -> Dataset:
    train_x, test_x = (torch.as_tensor(x, dtype=torch.uint8).contiguous() for x in (train_x, test_x))
    train_y, test_y = (torch.as_tensor(y, dtype=torch.int64) for y in (train_y, test_y))
    return Dataset(train_x, train_y, test_x, test_y, tuple(classes), _fingerprint(train_x, train_y, test_x, test_y))


# ----------------------------------------------------------------------------- torchvision CIFAR-10


def _download_cifar10(data_dir: Path, download: bool) -> None:
    import torchvision

    hint = (
        f"CIFAR-10 is not in {data_dir} and could not be downloaded ({{why}}); put the extracted "
        f"'cifar-10-batches-py' folder (or an image folder with train/<class>/ and test/<class>/) there, "
        f"or pass --data-dir (or set KDTUNE_DATA_DIR) to where it is"
    )
    if not download:
        raise UserError(hint.format(why="download disabled"))
    try:
        torchvision.datasets.CIFAR10(str(data_dir), train=True, download=True)
    except Exception as error:  # URLError, PermissionError, a truncated archive...
        raise UserError(hint.format(why=f"{type(error).__name__}: {error}")) from None


def _decode_torchvision(data_dir: Path) -> Dataset:
    import torchvision

    try:
        train = torchvision.datasets.CIFAR10(str(data_dir), train=True, download=False)
        test = torchvision.datasets.CIFAR10(str(data_dir), train=False, download=False)
    except Exception as error:
        raise UserError(f"{data_dir / 'cifar-10-batches-py'} is not a readable CIFAR-10 copy: {error}") from None
    to_nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731  (N,32,32,3) -> (N,3,32,32)
    return _make_dataset(to_nchw(train.data), train.targets, to_nchw(test.data), test.targets, train.classes)


# ----------------------------------------------------------------------------- image folders


def _image_folder_listing(data_dir: Path) -> dict[str, list[tuple[str, list[Path]]]]:
    """{'train': [(class, [paths...]), ...], 'test': [...]} with classes sorted and checked to agree."""
    listing = {}
    for split in ("train", "test"):
        class_dirs = sorted(d for d in (data_dir / split).iterdir() if d.is_dir())
        if not class_dirs:
            raise UserError(f"image folder {data_dir / split} has no class folders; expected {split}/<class>/<image>")
        listing[split] = []
        for d in class_dirs:
            paths = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise UserError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            listing[split].append((d.name, paths))
    train_classes = [c for c, _ in listing["train"]]
    test_classes = [c for c, _ in listing["test"]]
    if train_classes != test_classes:
        missing = sorted(set(train_classes) ^ set(test_classes))
        raise UserError(
            f"image folder {data_dir}: train and test classes differ (missing on one side: {', '.join(missing)})"
        )
    return listing


def _decode_image_folder(data_dir: Path, listing) -> Dataset:
    from PIL import Image
    from tqdm import tqdm

    total = sum(len(paths) for split in listing.values() for _, paths in split)
    arrays = {}
    # disable=None: a bar on a terminal, silence in logs and pipes.
    with tqdm(total=total, desc=f"decoding {data_dir}", unit="img", leave=False, disable=None) as bar:
        for split, classes in listing.items():
            images, labels = [], []
            for label, (_, paths) in enumerate(classes):
                for path in paths:
                    try:
                        with Image.open(path) as opened:
                            image = np.asarray(opened.convert("RGB"))
                    except Exception as error:
                        raise UserError(f"cannot read image {path}: {error}") from None
                    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
                        raise UserError(f"image {path} is {image.shape[1]}x{image.shape[0]}; expected 32x32")
                    images.append(image.transpose(2, 0, 1))
                    labels.append(label)
                bar.update(len(paths))
            arrays[split] = (np.stack(images), labels)
    classes = [c for c, _ in listing["train"]]
    return _make_dataset(*arrays["train"], *arrays["test"], classes)


# ----------------------------------------------------------------------------- splits


def stratified_sample(labels: torch.Tensor, pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Pick n indices from `pool`, each class in proportion to its share of the pool (largest remainder)."""
    pool_labels = labels[pool]
    classes, counts = torch.unique(pool_labels, return_counts=True)
    quota = counts.double() * n / len(pool)
    take = quota.floor().long()
    short = n - int(take.sum())
    take[torch.argsort(quota - take, descending=True)[:short]] += 1
    picked = []
    for c, k in zip(classes.tolist(), take.tolist()):
        members = pool[pool_labels == c]
        picked.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.sort(torch.cat(picked)).values


def make_splits(dataset: Dataset, val_size: int = 5000, train_subset: int | None = None, split_seed: int = 0) -> Splits:
    """Carve a stratified validation set from train, and optionally a stratified train subset; both seeded."""
    n_train = len(dataset.train_labels)
    if not 1 <= val_size < n_train:
        raise UserError(f"invalid val_size {val_size}: must be between 1 and {n_train - 1} (the train set has {n_train})")
    room = n_train - val_size
    if train_subset is not None and not 1 <= train_subset <= room:
        raise UserError(f"invalid train_subset {train_subset}: must be between 1 and {room} (train minus validation)")
    generator = torch.Generator().manual_seed(split_seed)
    everything = torch.arange(n_train)
    val_idx = stratified_sample(dataset.train_labels, everything, val_size, generator)
    rest = everything[~torch.isin(everything, val_idx)]
    train_idx = rest if train_subset is None else stratified_sample(dataset.train_labels, rest, train_subset, generator)
    return Splits(
        train_images=dataset.train_images[train_idx],
        train_labels=dataset.train_labels[train_idx],
        val_images=dataset.train_images[val_idx],
        val_labels=dataset.train_labels[val_idx],
        test_images=dataset.test_images,
        test_labels=dataset.test_labels,
        classes=dataset.classes,
        key=_digest([dataset.fingerprint, val_size, train_subset, split_seed])[:16],
    )


# ----------------------------------------------------------------------------- augmentation and batches


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # Distinct, reproducible streams per (seed, epoch, purpose), so resuming at epoch e replays epoch e exactly.
    return torch.Generator().manual_seed(int(_digest(["kdtune", seed, epoch, stream])[:15], 16))


def augmentation_params(n: int, aug_seed: int, epoch: int) -> torch.Tensor:
    """(n, 3) int64: crop row offset, crop column offset (0..2*PAD) and flip (0/1) of each training image."""
    g = _epoch_generator(aug_seed, epoch, stream=0)
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g)
    flips = torch.randint(0, 2, (n, 1), generator=g)
    return torch.cat([offsets, flips], dim=1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which the n training images are visited in `epoch`."""
    return torch.randperm(n, generator=_epoch_generator(seed, epoch, stream=1))


def augment(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Crop (with zero padding) and flip a uint8 batch (B, 3, 32, 32) by per-image `params` (B, 3); same device."""
    b = images.shape[0]
    params = params.to(images.device)
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    span = torch.arange(IMAGE_SIZE, device=images.device)
    rows = params[:, 0:1] + span  # (B, 32)
    cols = params[:, 1:2] + span
    cols = torch.where(params[:, 2:3].bool(), cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indexing on (batch, row, col) around the channel slice gives (B, 32, 32, 3):
    # the permute back to NCHW is a free view in channels_last layout.
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 normalised with the seed's CIFAR-10 mean and std."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
