"""Shared fixtures: the real CIFAR-10 image folder (when present) and an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    root = tmp_path_factory.mktemp("cifar10-mini")
    for split, per_class in (("train", 100), ("test", 30)):
        for class_dir in sorted((real_data_dir / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                (target / image.name).symlink_to(image)
    return root
