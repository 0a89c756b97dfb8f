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
