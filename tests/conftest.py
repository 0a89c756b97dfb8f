"""Shared fixtures: the real CIFAR-10 image folder (when present) and an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import link_image_subset

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Decode caches go to a per-session folder, never into the user's ~/.cache or the data dir."""
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("kdtune-cache")
    mp.setenv("KDTUNE_CACHE_DIR", str(folder))
    yield folder
    mp.undo()


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"real CIFAR-10 image folder not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def mini_data_dir(real_data_dir, tmp_path_factory) -> Path:
    """A small image folder of real CIFAR-10 images (100 train and 30 test per class), linked, not copied.

    Sweeps and end-to-end runs evaluate the whole test split every epoch; a small
    one keeps them to seconds while still reading real JPEGs.
    """
    return link_image_subset(real_data_dir, tmp_path_factory.mktemp("cifar10-mini"), 100, 30)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, two OpenMP threads per process mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def three_class_dir(tmp_path_factory) -> Path:
    """A 3-class image folder of 40x40 PNGs (60 train and 20 test images per class), written by the test."""
    from helpers import write_shape_folder

    return write_shape_folder(tmp_path_factory.mktemp("three-class") / "shapes")
