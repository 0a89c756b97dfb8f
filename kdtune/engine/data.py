"""Image datasets as uint8 tensors: loading, the decode cache, splits and batch augmentation.

The whole dataset lives in memory as one uint8 tensor (N, 3, H, W) with
int64 labels, as in airbench.  Three sources (`dataset`, inferred from the
data dir when only one is there):

* `cifar10` / `cifar100`: torchvision's CIFAR-10 or CIFAR-100 under a data dir
  (downloaded when missing);
* `folder`: any image folder `train/<class>/*` + `test/<class>/*` (class index
  = sorted folder name), with any number of classes and one image size, e.g.
  `shared/datasets/cifar10-jpeg`.

`image_size` resizes every image to S x S once, at decode time.  Either source
is decoded once and cached outside the data dir (which may be read-only), with
its content fingerprint and its per-channel mean and standard deviation
(computed from the training split: what inputs are normalised with), so later
runs load in a fraction of a second (a cache that cannot be written, on a full
disk, is skipped with a note).  Data with fewer than two classes, or splits that
leave a class without training or validation images, are refused.

Augmentation (random crop with zero padding of 1/8 of the image side, 4 pixels
at 32x32, and horizontal flip) runs on whole batches on the model's device.
The view of training image i in epoch e is a pure function of (aug_seed,
epoch, i): this is what lets the teacher-logit cache replay exactly the views
a live teacher would have seen.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdtune.engine.atomic import remove_stale_temps, save_torch
from kdtune.engine.errors import UserError, first_line

DATASETS = ("cifar10", "cifar100", "folder")
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # as torchvision extracts them
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm"}
CACHE_FORMAT = 2


@dataclass(frozen=True)
class Dataset:
    """A whole dataset in memory: images (N, 3, H, W) uint8, labels (N,) int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    fingerprint: str  # content hash: names this exact data in teacher and cache keys
    mean: tuple[float, ...]  # per channel, pixel values in [0, 1], over the training split
    std: tuple[float, ...]


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
    mean: tuple[float, ...]  # the dataset's normalisation statistics (see Dataset)
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[-2:])

    def summary(self) -> dict:
        """What run and experiment records say about the data."""
        return {"splits": self.key, "train": len(self.train_labels), "val": len(self.val_labels),
                "test": len(self.test_labels), "classes": self.num_classes, "image_size": list(self.image_size),
                "mean": list(self.mean), "std": list(self.std)}

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


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def detect_dataset(data_dir: str | os.PathLike, dataset: str | None = None) -> str:
    """`dataset` checked, or the one source `data_dir` holds; CIFAR-10 (to download) when it holds none."""
    if dataset is not None:
        return check_dataset(dataset)
    data_dir = Path(data_dir).expanduser()
    present = [name for name, folder in CIFAR_FOLDERS.items() if (data_dir / folder).is_dir()]
    present += ["folder"] if is_image_folder(data_dir) else []
    if len(present) > 1:
        raise UserError(f"{data_dir} holds several datasets ({', '.join(present)}); choose one with --dataset")
    return present[0] if present else "cifar10"


def load_dataset(
    data_dir: str | os.PathLike, download: bool = True, dataset: str | None = None, image_size: int | None = None
) -> Dataset:
    """Load `dataset` (default: inferred, see `detect_dataset`) from `data_dir` through the decode cache,
    every image resized to `image_size` x `image_size` when given."""
    data_dir = Path(data_dir).expanduser()
    kind = detect_dataset(data_dir, dataset)
    if image_size is not None and image_size < 1:
        raise UserError(f"invalid image size {image_size}: must be an integer >= 1")
    if kind == "folder":
        if not is_image_folder(data_dir):
            raise UserError(f"{data_dir} is not an image folder: expected {data_dir}/train/<class>/ and "
                            f"{data_dir}/test/<class>/")
        decode = lambda: _decode_image_folder(data_dir, _image_folder_listing(data_dir), image_size)  # noqa: E731
        stamp = _image_folder_stamp(data_dir)
    else:
        batches = data_dir / CIFAR_FOLDERS[kind]
        if not batches.is_dir():
            _download_cifar(kind, data_dir, download)
        decode = lambda: _decode_torchvision(kind, data_dir, image_size)  # noqa: E731
        stamp = [(p.name, *_stat(p)) for p in sorted(batches.iterdir())]
    key = _digest([CACHE_FORMAT, kind, str(data_dir.resolve()), stamp, image_size])
    cached = cache_dir() / f"dataset-{key[:20]}.pt"
    remove_stale_temps(cached.parent)  # caches interrupted while being written
    if cached.exists():
        try:
            # mmap: the tensors page in as they are used, so a cache hit costs almost nothing.
            dataset = Dataset(**torch.load(cached, weights_only=True, mmap=True))
        except Exception:
            pass  # a cache from an interrupted or older run: decode again and overwrite it
        else:
            return check_classes(dataset, str(data_dir))  # a cache written before this check existed
    dataset = check_classes(decode(), str(data_dir))
    try:
        save_torch(cached, dataset.__dict__)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        # An unwritable cache only costs the next run a decode: the run goes on.
        print(f"note: could not cache the decoded dataset in {cached.parent} ({first_line(error, 120)}); "
              f"the next run decodes it again", file=sys.stderr)
    return dataset


def check_classes(dataset: Dataset, source: str = "the data") -> Dataset:
    """`dataset`, refused unless it has at least two classes: with one, every prediction is right and every
    accuracy 100%."""
    n = len(dataset.classes)
    if n < 2:
        named = f" ({', '.join(dataset.classes)})" if n else ""
        raise UserError(f"{source} has {n} class{'es' * (n != 1)}{named}: a classifier needs at least two; add class "
                        f"folders (train/<class>/ and test/<class>/) or pass another --data-dir")
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
    mean, std = channel_stats(train_x)
    fingerprint = _fingerprint(train_x, train_y, test_x, test_y)
    return Dataset(train_x, train_y, test_x, test_y, tuple(classes), fingerprint, mean, std)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), on the [0, 1] scale.

    Exact and light: from each channel's 256-bin histogram, not a float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        m = float((counts * values).sum() / counts.sum())
        var = float((counts * (values - m) ** 2).sum() / counts.sum())
        mean.append(m)
        std.append(max(var, 1e-12) ** 0.5)  # a constant channel: no division by zero
    return tuple(mean), tuple(std)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> (..., 3, size, size): bilinear with antialiasing, as torchvision's Resize."""
    from torchvision.transforms.v2.functional import resize

    return resize(images, [size, size], antialias=True)


# ----------------------------------------------------------------------------- torchvision CIFAR-10 / CIFAR-100


def _cifar_class(kind: str):
    import torchvision

    return {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[kind]


def _download_cifar(kind: str, data_dir: Path, download: bool) -> None:
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[kind]
    hint = (
        f"{name} is not in {data_dir} and could not be downloaded ({{why}}); put the extracted "
        f"'{CIFAR_FOLDERS[kind]}' folder (or an image folder with train/<class>/ and test/<class>/) there, "
        f"or pass --data-dir (or set KDTUNE_DATA_DIR) to where it is"
    )
    if not download:
        raise UserError(hint.format(why="download disabled"))
    try:
        _cifar_class(kind)(str(data_dir), train=True, download=True)
    except Exception as error:  # URLError, PermissionError, a truncated archive...
        raise UserError(hint.format(why=f"{type(error).__name__}: {first_line(error)}")) from None


def _decode_torchvision(kind: str, data_dir: Path, image_size: int | None) -> Dataset:
    """CIFAR through torchvision, which checks the files' md5 sums before it unpickles them."""
    source = _cifar_class(kind)
    try:
        train = source(str(data_dir), train=True, download=False)
        test = source(str(data_dir), train=False, download=False)
    except Exception as error:
        raise UserError(f"{data_dir / CIFAR_FOLDERS[kind]} is not a readable {source.__name__} copy: "
                        f"{first_line(error)}") from None

    def to_nchw(array):  # (N, 32, 32, 3) -> (N, 3, S, S)
        images = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))
        return images if image_size is None else _resize(images, image_size)

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


def _decode_image_folder(data_dir: Path, listing, image_size: int | None) -> Dataset:
    """Decode every image (to RGB); all must share the first one's size unless `image_size` resizes them."""
    from PIL import Image
    from tqdm import tqdm

    total = sum(len(paths) for split in listing.values() for _, paths in split)
    arrays, first = {}, None
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
                        raise UserError(f"cannot read image {path}: {first_line(error)}") from None
                    image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
                    if image_size is not None:
                        image = _resize(image, image_size)
                    first = first or (path, image.shape)
                    if image.shape != first[1]:
                        raise UserError(
                            f"image {path} is {image.shape[2]}x{image.shape[1]}, but {first[0]} is "
                            f"{first[1][2]}x{first[1][1]}; images must share one size, or pass --image-size S"
                        )
                    images.append(image)
                    labels.append(label)
                bar.update(len(paths))
            arrays[split] = (torch.stack(images), labels)
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
    check_classes(dataset)
    generator = torch.Generator().manual_seed(split_seed)
    everything = torch.arange(n_train)
    val_idx = stratified_sample(dataset.train_labels, everything, val_size, generator)
    rest = everything[~torch.isin(everything, val_idx)]
    train_idx = rest if train_subset is None else stratified_sample(dataset.train_labels, rest, train_subset, generator)
    _check_every_class_split(dataset, val_idx, rest, train_idx, val_size, train_subset)
    return Splits(
        train_images=dataset.train_images[train_idx],
        train_labels=dataset.train_labels[train_idx],
        val_images=dataset.train_images[val_idx],
        val_labels=dataset.train_labels[val_idx],
        test_images=dataset.test_images,
        test_labels=dataset.test_labels,
        classes=dataset.classes,
        # The statistics name how inputs are normalised: a teacher or logit cache made under other ones is not reused.
        key=_digest([dataset.fingerprint, dataset.mean, dataset.std, val_size, train_subset, split_seed])[:16],
        mean=dataset.mean,
        std=dataset.std,
    )


def _check_every_class_split(dataset: Dataset, val_idx, rest, train_idx, val_size: int, train_subset: int | None):
    """Refuse splits that leave a class without validation or training images: its accuracy would mean nothing,
    or the model would never see it.  Stratified splits only do so for classes too small for the sizes asked."""
    counts = [torch.bincount(dataset.train_labels[idx], minlength=len(dataset.classes)).tolist()
              for idx in (torch.arange(len(dataset.train_labels)), val_idx, rest, train_idx)]
    n_train, room = len(dataset.train_labels), len(rest)
    for name, total, val, left, train in zip(dataset.classes, *counts):
        if total == 0:
            raise UserError(f"class {name!r} has no training images: every class needs some")
        if val == 0:
            need = math.ceil(n_train / total)  # then its share of the validation set is at least one image
            raise UserError(f"class {name!r} gets no validation images: it has {total} of the {n_train} training "
                            f"images, too few for --val-size {val_size}; "
                            + (f"raise --val-size to {need} or more, or " if need < n_train else "")
                            + "add training images of it")
        if left == 0:
            raise UserError(f"class {name!r} keeps no training images: --val-size {val_size} takes all {total} of "
                            f"them for validation; lower --val-size or add training images of it")
        if train == 0:
            raise UserError(f"class {name!r} gets no images in --train-subset {train_subset}: it has {left} of the "
                            f"{room} left after validation; raise --train-subset to {math.ceil(room / left)} or more")


# ----------------------------------------------------------------------------- augmentation and batches


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # Distinct, reproducible streams per (seed, epoch, purpose), so resuming at epoch e replays epoch e exactly.
    return torch.Generator().manual_seed(int(_digest(["kdtune", seed, epoch, stream])[:15], 16))


def crop_padding(image_size: tuple[int, int]) -> int:
    """Zero padding of the random crop: 1/8 of the shorter side (4 pixels at 32x32, as in the seed)."""
    return max(1, round(min(image_size) / 8))


def augmentation_params(n: int, aug_seed: int, epoch: int, image_size: tuple[int, int]) -> torch.Tensor:
    """(n, 3) int64: crop row offset, crop column offset (0..2*pad) and flip (0/1) of each training image."""
    pad = crop_padding(image_size)
    g = _epoch_generator(aug_seed, epoch, stream=0)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    flips = torch.randint(0, 2, (n, 1), generator=g)
    return torch.cat([offsets, flips], dim=1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which the n training images are visited in `epoch`."""
    return torch.randperm(n, generator=_epoch_generator(seed, epoch, stream=1))


def within_class_donors(labels: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """(n,) int64: for each training image, the image of the same class whose teacher logits teach it in `epoch`
    (the `kd-shuffled` control): each class is put in a random order drawn for (seed, epoch) and every image takes
    the next one's logits, the last the first's.  No image is its own donor unless it is alone in its class."""
    labels = labels.cpu()
    n = len(labels)
    order = torch.randperm(n, generator=_epoch_generator(seed, epoch, stream=2))
    grouped = order[torch.argsort(labels[order], stable=True)]  # classes in turn, each in its random order
    _, sizes = torch.unique_consecutive(labels[grouped], return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    size = torch.repeat_interleave(sizes, sizes)
    position = torch.arange(n)
    donors = torch.empty(n, dtype=torch.long)
    donors[grouped] = grouped[starts + (position - starts + 1) % size]
    return donors


def augment(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Crop (with zero padding) and flip a uint8 batch (B, 3, H, W) by per-image `params` (B, 3); same device."""
    b, _, h, w = images.shape
    pad = crop_padding((h, w))
    params = params.to(images.device)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = params[:, 0:1] + torch.arange(h, device=images.device)  # (B, H)
    cols = params[:, 1:2] + torch.arange(w, device=images.device)  # (B, W)
    cols = torch.where(params[:, 2:3].bool(), cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indexing on (batch, row, col) around the channel slice gives (B, H, W, 3):
    # the permute back to NCHW is a free view in channels_last layout.
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 normalised per channel with `mean` and `std` (of pixel values in [0, 1])."""
    mean_t, std_t = _channel_constants(tuple(mean), tuple(std), images.device)
    return (images.float() / 255.0 - mean_t) / std_t


@functools.lru_cache(maxsize=32)
def _channel_constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    # Made once per device: building them in every step would copy them host-to-device twice a step (the CPU
    # waiting on a GPU each time) and make the step impossible to capture as a CUDA graph.
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_tensor(mean).view(1, -1, 1, 1), as_tensor(std).view(1, -1, 1, 1)
