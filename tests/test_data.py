"""Data: augmentation determinism, splits, the torchvision and image-folder sources, the decode cache."""

from __future__ import annotations

import dataclasses
import os
import pickle
import stat
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import kdtune.engine.data as data
from kdtune.engine.data import (
    Dataset,
    augment,
    augmentation_params,
    channel_stats,
    crop_padding,
    detect_dataset,
    epoch_order,
    load_dataset,
    make_splits,
    normalize,
    resolve_data_dir,
)
from kdtune.engine.errors import UserError

SIZE = (32, 32)  # CIFAR's image size: crops pad by 4
# ----------------------------------------------------------------------------- augmentation


def _reference_augment(images: torch.Tensor, params: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """One image at a time: zero-pad by `pad`, crop H x W at (row, col), then mirror left-right if flip."""
    out = torch.empty_like(images)
    _, _, h, w = images.shape
    for i in range(len(images)):
        row, col, flip = (int(v) for v in params[i])
        padded = torch.zeros(3, h + 2 * pad, w + 2 * pad, dtype=images.dtype)
        padded[:, pad : pad + h, pad : pad + w] = images[i]
        crop = padded[:, row : row + h, col : col + w]
        if flip:
            crop = torch.stack([crop[:, :, w - 1 - k] for k in range(w)], dim=2)
        out[i] = crop
    return out


def test_augmentation_params_are_a_pure_function_of_their_arguments():
    a = augmentation_params(500, aug_seed=3, epoch=2, image_size=SIZE)
    assert a.shape == (500, 3) and a.dtype == torch.int64
    assert torch.equal(a, augmentation_params(500, aug_seed=3, epoch=2, image_size=SIZE))
    assert not torch.equal(a, augmentation_params(500, aug_seed=3, epoch=3, image_size=SIZE))
    assert not torch.equal(a, augmentation_params(500, aug_seed=4, epoch=2, image_size=SIZE))


def test_augmentation_params_ranges():
    p = augmentation_params(4000, aug_seed=0, epoch=0, image_size=SIZE)
    assert p[:, :2].min() == 0 and p[:, :2].max() == 8
    assert set(p[:, 0].unique().tolist()) == set(range(9))
    assert set(p[:, 1].unique().tolist()) == set(range(9))
    assert set(p[:, 2].unique().tolist()) == {0, 1}


def test_augment_matches_per_image_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=g)  # no zeros: padding shows
    params = augmentation_params(24, aug_seed=1, epoch=0, image_size=SIZE)
    # Make sure the corner cases are in the batch.
    params[0] = torch.tensor([0, 0, 0])
    params[1] = torch.tensor([8, 8, 1])
    params[2] = torch.tensor([4, 4, 0])
    params[3] = torch.tensor([0, 8, 1])
    got = augment(images, params)
    assert got.shape == images.shape and got.dtype == torch.uint8
    assert torch.equal(got, _reference_augment(images, params))
    assert torch.equal(got[2], images[2])  # centre crop, no flip: the image itself
    assert (got[0, :, :4, :] == 0).all() and (got[0, :, 4:, 4:] != 0).all()  # shifted by 4: zero border


@pytest.mark.parametrize("size, pad", [((40, 40), 5), ((40, 56), 5), ((64, 64), 8), ((8, 8), 1)])
def test_padding_scales_with_the_image_and_augment_matches_the_reference(size, pad):
    assert crop_padding(size) == pad
    g = torch.Generator().manual_seed(1)
    images = torch.randint(1, 256, (40, 3, *size), dtype=torch.uint8, generator=g)
    params = augmentation_params(40, aug_seed=1, epoch=0, image_size=size)
    assert params[:, :2].min() >= 0 and params[:, :2].max() <= 2 * pad
    params[0] = torch.tensor([0, 2 * pad, 1])  # a corner case: the far corner, flipped
    got = augment(images, params)
    assert got.shape == images.shape
    assert torch.equal(got, _reference_augment(images, params, pad))


def test_augment_is_deterministic_across_calls():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    p = augmentation_params(8, aug_seed=9, epoch=1, image_size=SIZE)
    assert torch.equal(augment(images, p), augment(images.clone(), p.clone()))


def test_epoch_order_is_a_seeded_permutation():
    order = epoch_order(300, seed=1, epoch=0)
    assert torch.equal(order.sort().values, torch.arange(300))
    assert torch.equal(order, epoch_order(300, seed=1, epoch=0))
    assert not torch.equal(order, epoch_order(300, seed=1, epoch=1))
    assert not torch.equal(order, epoch_order(300, seed=2, epoch=0))


def test_epoch_order_and_augmentation_are_independent_streams():
    # Same seed and epoch, different purpose: the order must not be derived from the crop offsets.
    order = epoch_order(200, seed=5, epoch=0)
    params = augmentation_params(200, aug_seed=5, epoch=0, image_size=SIZE)
    assert not torch.equal(order[:50] % 9, params[:50, 0])


def test_augmentation_does_not_depend_on_global_rng():
    torch.manual_seed(0)
    a = augmentation_params(50, aug_seed=2, epoch=4, image_size=SIZE)
    torch.manual_seed(123)
    torch.rand(10)
    assert torch.equal(a, augmentation_params(50, aug_seed=2, epoch=4, image_size=SIZE))


# ----------------------------------------------------------------------------- splits


def _unique_dataset(per_class: int = 50, classes: int = 10, n_test: int = 20) -> Dataset:
    """Balanced labels; image i carries i in its first two pixels, so identity can be read back."""
    n = per_class * classes
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    idx = torch.arange(n)
    images[:, 0, 0, 0] = (idx % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (idx // 256).to(torch.uint8)
    labels = idx % classes
    test = torch.zeros(n_test, 3, 32, 32, dtype=torch.uint8)
    return Dataset(images, labels, test, torch.arange(n_test) % classes, tuple(f"c{i}" for i in range(classes)), "fp",
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


def test_splits_are_stratified_disjoint_and_complete():
    dataset = _unique_dataset()
    s = make_splits(dataset, val_size=100)
    assert torch.bincount(s.val_labels, minlength=10).tolist() == [10] * 10
    assert torch.bincount(s.train_labels, minlength=10).tolist() == [40] * 10
    train_ids, val_ids = _ids(s.train_images), _ids(s.val_images)
    assert len(set(train_ids)) == 400 and len(set(val_ids)) == 100
    assert not set(train_ids) & set(val_ids)
    assert set(train_ids) | set(val_ids) == set(range(500))
    # Labels travel with their images.
    assert torch.equal(s.train_labels, torch.tensor(train_ids) % 10)
    assert torch.equal(s.val_labels, torch.tensor(val_ids) % 10)
    assert torch.equal(s.test_images, dataset.test_images) and s.classes == dataset.classes


def test_splits_key_names_the_normalisation():
    dataset = _unique_dataset()
    other = dataclasses.replace(dataset, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
    assert make_splits(dataset, val_size=100).key != make_splits(other, val_size=100).key


def test_splits_are_seeded():
    dataset = _unique_dataset()
    a = make_splits(dataset, val_size=100, split_seed=0)
    b = make_splits(dataset, val_size=100, split_seed=0)
    c = make_splits(dataset, val_size=100, split_seed=1)
    assert _ids(a.val_images) == _ids(b.val_images) and a.key == b.key
    assert set(_ids(a.val_images)) != set(_ids(c.val_images)) and a.key != c.key


def test_train_subset_is_stratified_and_outside_validation():
    dataset = _unique_dataset()
    s = make_splits(dataset, val_size=100, train_subset=200)
    assert torch.bincount(s.train_labels, minlength=10).tolist() == [20] * 10
    assert not set(_ids(s.train_images)) & set(_ids(s.val_images))
    assert len(set(_ids(s.train_images))) == 200
    assert s.key != make_splits(dataset, val_size=100).key


def test_uneven_split_keeps_class_proportions():
    dataset = _unique_dataset()
    s = make_splits(dataset, val_size=55)
    counts = torch.bincount(s.val_labels, minlength=10)
    assert counts.sum() == 55 and counts.min() >= 5 and counts.max() <= 6


@pytest.mark.parametrize("kwargs, bad", [({"val_size": 500}, "500"), ({"val_size": 0}, "0"),
                                         ({"val_size": 100, "train_subset": 401}, "401"),
                                         ({"val_size": 100, "train_subset": 0}, "0")])
def test_impossible_split_sizes_raise(kwargs, bad):
    with pytest.raises(UserError) as info:
        make_splits(_unique_dataset(), **kwargs)
    assert bad in str(info.value)


# ----------------------------------------------------------------------------- torchvision CIFAR-10


def _write_fake_cifar(root: Path, per_batch: int = 10, n_test: int = 10) -> dict:
    """CIFAR-10's python-pickle layout: five data batches, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {"train_data": [], "train_labels": []}
    for b in range(1, 6):
        batch = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump({"data": batch, "labels": labels, "batch_label": f"training batch {b} of 5"}, f)
        written["train_data"].append(batch)
        written["train_labels"] += labels
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = [i % 10 for i in range(n_test)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": test, "labels": test_labels}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f)
    written.update(train_data=np.concatenate(written["train_data"]), test_data=test, test_labels=test_labels,
                   names=names)
    return written


@pytest.fixture
def trust_fake_cifar(monkeypatch):
    """torchvision checks CIFAR's md5 sums (`check_integrity`, used by _check_integrity and _load_meta)."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


def test_torchvision_source_loads_fake_cifar(tmp_path, trust_fake_cifar, monkeypatch):
    fake = _write_fake_cifar(tmp_path)
    dataset = load_dataset(tmp_path, download=False)
    assert dataset.train_images.shape == (50, 3, 32, 32) and dataset.train_images.dtype == torch.uint8
    assert dataset.test_images.shape == (10, 3, 32, 32)
    # CIFAR rows are R plane, G plane, B plane of 32x32 each: exactly NCHW after a reshape.
    assert torch.equal(dataset.train_images, torch.from_numpy(fake["train_data"].reshape(-1, 3, 32, 32)))
    assert torch.equal(dataset.test_images, torch.from_numpy(fake["test_data"].reshape(-1, 3, 32, 32)))
    assert dataset.train_labels.tolist() == fake["train_labels"] and dataset.train_labels.dtype == torch.int64
    assert dataset.test_labels.tolist() == fake["test_labels"]
    assert dataset.classes == tuple(fake["names"])

    # The second load comes from the decode cache: decoding again would fail.
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data, "_decode_torchvision", no_decode)
    again = load_dataset(tmp_path, download=False)
    assert torch.equal(again.train_images, dataset.train_images)
    assert torch.equal(again.test_labels, dataset.test_labels)
    assert again.classes == dataset.classes and again.fingerprint == dataset.fingerprint


def test_cache_is_refreshed_when_a_batch_file_changes(tmp_path, trust_fake_cifar):
    _write_fake_cifar(tmp_path)
    first = load_dataset(tmp_path, download=False)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({"data": np.full((10, 3072), 7, dtype=np.uint8), "labels": [1] * 10}, f)
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse-clock file system
    second = load_dataset(tmp_path, download=False)
    assert (second.test_images == 7).all() and second.test_labels.tolist() == [1] * 10
    assert second.fingerprint != first.fingerprint


def test_damaged_cifar_copy_is_a_user_error(tmp_path):
    _write_fake_cifar(tmp_path)  # md5 sums do not match the real files: torchvision refuses it
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_dataset(tmp_path, download=False)


@pytest.mark.parametrize("failure", [urllib.error.URLError("no network"), PermissionError(13, "no network")])
def test_missing_data_dir_without_network_names_dir_and_flag(tmp_path, monkeypatch, failure):
    def offline(*args, **kwargs):
        raise failure

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        load_dataset(missing)
    message = str(info.value)
    assert str(missing) in message and "--data-dir" in message and "no network" in message


def test_missing_data_dir_with_download_disabled(tmp_path):
    with pytest.raises(UserError) as info:
        load_dataset(tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere") in str(info.value) and "--data-dir" in str(info.value)


# ----------------------------------------------------------------------------- image folders


def write_png(image: torch.Tensor, path: str) -> None:
    """Save a uint8 (C, H, W) tensor as a (lossless) PNG."""
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)


def _image(seed: int, size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    return torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _write_image_folder(root: Path, train: dict[str, int], test: dict[str, int], size=(32, 32)) -> dict:
    """PNG (lossless) images; returns {split: [(class, image), ...]} in file-name order per class."""
    written: dict = {}
    seed = 0
    for split, counts in (("train", train), ("test", test)):
        written[split] = {}
        for cls, n in counts.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            written[split][cls] = []
            for i in range(n):
                seed += 1
                image = _image(seed, size)
                write_png(image, str(folder / f"{i:03d}.png"))
                written[split][cls].append(image)
    return written


def test_image_folder_classes_sorted_and_labels(tmp_path):
    root = tmp_path / "images"
    written = _write_image_folder(root, {"cat": 3, "ant": 2, "bee": 4}, {"bee": 1, "cat": 2, "ant": 1})
    dataset = load_dataset(root)
    assert dataset.classes == ("ant", "bee", "cat")
    assert dataset.train_labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert dataset.test_labels.tolist() == [0, 1, 2, 2]
    expected_train = torch.stack([img for cls in ("ant", "bee", "cat") for img in written["train"][cls]])
    expected_test = torch.stack([img for cls in ("ant", "bee", "cat") for img in written["test"][cls]])
    assert torch.equal(dataset.train_images, expected_train)
    assert torch.equal(dataset.test_images, expected_test)


def test_image_folder_missing_class_on_test_side(tmp_path):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 1, "bee": 1, "cat": 1}, {"ant": 1, "bee": 1})
    with pytest.raises(UserError, match="cat"):
        load_dataset(root)


def test_image_folder_unreadable_image_is_named(tmp_path):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 1, "bee": 1}, {"ant": 1, "bee": 1})
    bad = root / "train" / "bee" / "x.jpg"
    bad.write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(UserError) as info:
        load_dataset(root)
    assert str(bad) in str(info.value)


def test_image_folder_wrong_size_is_named(tmp_path):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 1, "bee": 1}, {"ant": 1, "bee": 1})
    big = root / "test" / "ant" / "big.png"
    write_png(_image(99, size=(40, 48)), str(big))
    with pytest.raises(UserError) as info:
        load_dataset(root)
    assert str(big) in str(info.value) and "48x40" in str(info.value)


def test_image_folder_empty_class_folder_is_named(tmp_path):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 1, "bee": 1}, {"ant": 1, "bee": 1})
    (root / "train" / "cow").mkdir()
    with pytest.raises(UserError, match="cow"):
        load_dataset(root)


def test_grayscale_image_is_converted_to_rgb(tmp_path):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 1, "bee": 1}, {"ant": 1, "bee": 1})
    gray = torch.full((1, 32, 32), 77, dtype=torch.uint8)
    write_png(gray, str(root / "train" / "ant" / "zz-gray.png"))
    dataset = load_dataset(root)
    assert dataset.train_images.shape == (3, 3, 32, 32)
    assert (dataset.train_images[1] == 77).all()  # ant/000.png, ant/zz-gray.png, bee/000.png


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def read_only_image_folder(tmp_path):
    root = tmp_path / "ro-images"
    written = _write_image_folder(root, {"ant": 2, "bee": 2}, {"ant": 1, "bee": 1})
    paths = [root, *root.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        os.chmod(p, modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield root, written
    for p in reversed(paths):
        os.chmod(p, modes[p])


def test_data_dir_is_never_written(read_only_image_folder, isolated_cache):
    root, written = read_only_image_folder
    before = _snapshot(root)
    cache_before = set(Path(os.environ["KDTUNE_CACHE_DIR"]).glob("dataset-*.pt"))
    dataset = load_dataset(root)
    assert torch.equal(dataset.train_images[0], written["train"]["ant"][0])
    # chmod does not stop root: also check that nothing under the data dir appeared or changed.
    assert _snapshot(root) == before
    new = set(Path(os.environ["KDTUNE_CACHE_DIR"]).glob("dataset-*.pt")) - cache_before
    assert len(new) == 1
    assert Path(os.environ["KDTUNE_CACHE_DIR"]) == isolated_cache
    assert torch.equal(load_dataset(root).train_images, dataset.train_images)
    assert _snapshot(root) == before


def test_image_folder_cache_notices_an_added_image(tmp_path):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 1, "bee": 1}, {"ant": 1, "bee": 1})
    assert len(load_dataset(root).train_labels) == 2
    write_png(_image(123), str(root / "train" / "bee" / "001.png"))
    assert load_dataset(root).train_labels.tolist() == [0, 1, 1]


def test_damaged_cache_file_is_decoded_again(tmp_path, monkeypatch):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 1, "bee": 1}, {"ant": 1, "bee": 1})
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDTUNE_CACHE_DIR", str(cache))
    first = load_dataset(root)
    (cached,) = cache.glob("dataset-*.pt")
    cached.write_bytes(cached.read_bytes()[:100])
    again = load_dataset(root)
    assert torch.equal(again.train_images, first.train_images)


# ----------------------------------------------------------------------------- any classes, sizes and sources


def test_image_folder_of_three_classes_at_40x40(three_class_dir):
    dataset = load_dataset(three_class_dir)
    assert dataset.classes == ("class0", "class1", "class2")
    assert dataset.train_images.shape == (180, 3, 40, 40) and dataset.test_images.shape == (60, 3, 40, 40)
    assert sorted(set(dataset.train_labels.tolist())) == [0, 1, 2]
    splits = make_splits(dataset, val_size=30)
    assert splits.num_classes == 3 and splits.image_size == (40, 40)
    assert (splits.mean, splits.std) == (dataset.mean, dataset.std)


def test_images_of_different_sizes_name_both_and_the_flag(tmp_path):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 1, "bee": 1}, {"ant": 1, "bee": 1}, size=(40, 40))
    odd = root / "train" / "bee" / "odd.png"
    write_png(_image(7, size=(24, 36)), str(odd))
    with pytest.raises(UserError) as info:
        load_dataset(root)
    message = str(info.value)
    assert str(odd) in message and "36x24" in message and "40x40" in message and "--image-size" in message


def test_image_size_resizes_every_image_at_decode_time(tmp_path):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 2, "bee": 2}, {"ant": 1, "bee": 1}, size=(40, 40))
    write_png(_image(7, size=(24, 36)), str(root / "train" / "bee" / "odd.png"))
    dataset = load_dataset(root, image_size=16)
    assert dataset.train_images.shape == (5, 3, 16, 16) and dataset.test_images.shape == (2, 3, 16, 16)
    original = load_dataset(tmp_path / "images", image_size=40)  # another size: its own cache entry
    assert original.train_images.shape == (5, 3, 40, 40)
    # Resizing a constant image keeps it constant.
    flat = tmp_path / "flat"
    _write_image_folder(flat, {"ant": 1, "bee": 1}, {"ant": 1, "bee": 1}, size=(40, 40))  # two: one class is refused
    for png in flat.rglob("*.png"):
        write_png(torch.full((3, 40, 40), 90, dtype=torch.uint8), str(png))
    assert (load_dataset(flat, image_size=24).train_images == 90).all()


def test_channel_stats_are_those_of_the_training_split():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=g)
    images[:, 2] //= 4  # a darker blue channel
    mean, std = channel_stats(images)
    pixels = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(pixels.mean(1).tolist(), abs=1e-12)
    assert std == pytest.approx(pixels.std(1, unbiased=False).tolist(), abs=1e-12)
    normalized = normalize(images, mean, std)
    assert normalized.mean((0, 2, 3)).abs().max() < 1e-5 and (normalized.std((0, 2, 3)) - 1).abs().max() < 1e-3


def test_stats_come_from_train_and_are_cached_with_the_fingerprint(tmp_path, monkeypatch):
    root = tmp_path / "images"
    _write_image_folder(root, {"ant": 3, "bee": 3}, {"ant": 1, "bee": 1})
    for png in (root / "test").rglob("*.png"):
        write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(png))  # black test images: not in the stats
    dataset = load_dataset(root)
    assert (dataset.mean, dataset.std) == channel_stats(dataset.train_images)
    assert min(dataset.mean) > 0.3  # random train images, around 0.5

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data, "_decode_image_folder", no_decode)
    again = load_dataset(root)
    assert (again.mean, again.std, again.fingerprint) == (dataset.mean, dataset.std, dataset.fingerprint)


def _write_fake_cifar100(root: Path, n_train: int = 30, n_test: int = 10) -> dict:
    """CIFAR-100's python-pickle layout as torchvision reads it: train, test and meta (fine and coarse labels)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        with open(folder / split, "wb") as f:
            pickle.dump({"data": images, "fine_labels": fine, "coarse_labels": [v // 5 for v in fine],
                         "filenames": [f"{split}_{i}.png" for i in range(n)]}, f)
        written[split] = (images, fine)
    names = [f"fine{i:02d}" for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"coarse{i}" for i in range(20)]}, f)
    written["names"] = names
    return written


def test_cifar100_in_torchvisions_format(tmp_path, trust_fake_cifar):
    fake = _write_fake_cifar100(tmp_path)
    assert detect_dataset(tmp_path) == "cifar100"
    dataset = load_dataset(tmp_path, download=False)
    assert dataset.classes == tuple(fake["names"]) and len(dataset.classes) == 100
    assert torch.equal(dataset.train_images, torch.from_numpy(fake["train"][0].reshape(-1, 3, 32, 32)))
    assert dataset.train_labels.tolist() == fake["train"][1] and dataset.test_labels.tolist() == fake["test"][1]
    assert (dataset.mean, dataset.std) == channel_stats(dataset.train_images)
    resized = load_dataset(tmp_path, download=False, dataset="cifar100", image_size=16)
    assert resized.train_images.shape == (30, 3, 16, 16)
    assert resized.fingerprint != dataset.fingerprint


def test_damaged_cifar100_copy_is_a_user_error(tmp_path):
    _write_fake_cifar100(tmp_path)  # md5 sums do not match the real files: torchvision refuses it
    with pytest.raises(UserError, match="cifar-100-python"):
        load_dataset(tmp_path, download=False)


def test_dataset_is_inferred_only_when_unambiguous(tmp_path, trust_fake_cifar):
    assert detect_dataset(tmp_path / "empty") == "cifar10"  # nothing there: CIFAR-10, downloaded
    _write_fake_cifar(tmp_path)
    assert detect_dataset(tmp_path) == "cifar10"
    _write_fake_cifar100(tmp_path)
    with pytest.raises(UserError) as info:
        load_dataset(tmp_path, download=False)
    assert "cifar10, cifar100" in str(info.value) and "--dataset" in str(info.value)
    assert len(load_dataset(tmp_path, download=False, dataset="cifar10").classes) == 10
    assert len(load_dataset(tmp_path, download=False, dataset="cifar100").classes) == 100


def test_missing_cifar100_with_download_disabled_names_its_folder(tmp_path):
    with pytest.raises(UserError) as info:
        load_dataset(tmp_path, download=False, dataset="cifar100")
    assert "CIFAR-100" in str(info.value) and "cifar-100-python" in str(info.value)


@pytest.mark.parametrize("kwargs, needle", [({"dataset": "folder"}, "not an image folder"),
                                            ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
                                            ({"image_size": 0}, "invalid image size 0")])
def test_bad_dataset_choices_are_named(tmp_path, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        load_dataset(tmp_path, download=False, **kwargs)


# ----------------------------------------------------------------------------- resolve_data_dir


def test_resolve_data_dir_precedence(monkeypatch):
    monkeypatch.setenv("KDTUNE_DATA_DIR", "/from/env")
    assert resolve_data_dir("/from/flag") == Path("/from/flag")
    assert resolve_data_dir(None) == Path("/from/env")
    monkeypatch.delenv("KDTUNE_DATA_DIR")
    assert resolve_data_dir(None) == Path("data")
    assert resolve_data_dir("~/x") == Path.home() / "x"
