"""Shared fixtures: the real CIFAR-10 image folder (when present), an isolated cache, the session's Ray instance,
the README's API example."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from helpers import link_image_subset

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg"
# The one Ray instance of a test session: a fresh local one (with no address, ray.init would join any cluster
# running on this machine), two CPUs as the CI machine has.
RAY_LOCAL = dict(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Decode caches go to a per-session folder, never into the user's ~/.cache or the data dir."""
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("kdtune-cache")
    mp.setenv("KDTUNE_CACHE_DIR", str(folder))
    yield folder
    mp.undo()


def in_ci() -> bool:
    """CI sets CI=true (GitHub Actions, GitLab, most others); "0", "false" or "" mean not."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_real_data() -> Path:
    """The real CIFAR-10 image folder; without it the tests that need it skip, except under CI, where its
    absence is a broken set-up that would otherwise pass unnoticed: they fail."""
    if not (REAL_DATA / "train").is_dir():
        reason = f"real CIFAR-10 image folder not found at {REAL_DATA}"
        if in_ci():
            pytest.fail(f"{reason}: CI must run the tests that read real images (CI={os.environ['CI']})",
                        pytrace=False)
        pytest.skip(reason)
    return REAL_DATA


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    return find_real_data()


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


def readme_python_example() -> str:
    """The Python block of README.md's "Python API" section, exactly as a user would copy it."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    match = re.search(r"^## Python API\n.*?^```python\n(.*?)^```", text, re.M | re.S)
    assert match, "README.md has no Python example under '## Python API'"
    return match.group(1)


@pytest.fixture(scope="session")
def ray_session():
    """The session's Ray: one local instance (RAY_LOCAL) started by the first test that needs Ray in this process,
    shut down when the session ends.  Sweeps run in-process find it (kdtune.sweep.runner.connect keeps an
    initialized Ray); a test that needs a Ray of its own here (a Cluster) takes `own_ray` as well.
    Subprocesses start their own.
    """
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()  # not ours: something a test left
    ray.init(**RAY_LOCAL)
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture()
def own_ray():
    """For a test that starts a Ray of its own in this process (a Cluster, ray.init(address=...)): the session's
    instance, if running, is shut down first (connect() would otherwise keep it, and a second ray.init fail),
    and started again afterwards for the ray_session users that follow."""
    ray = pytest.importorskip("ray")
    running = ray.is_initialized()
    if running:
        ray.shutdown()
    yield ray
    if ray.is_initialized():
        ray.shutdown()
    if running:
        ray.init(**RAY_LOCAL)


@pytest.fixture(scope="session")
def readme_experiment(ray_session, mini_data_dir, tmp_path_factory) -> Path:
    """The README's Python API example run as written, in a fresh folder whose my-images is the mini CIFAR-10
    subset; returns the experiment folder it made (other tests read it, e.g. `kdtune report` once installed)."""
    workdir = tmp_path_factory.mktemp("readme-example")
    (workdir / "my-images").symlink_to(mini_data_dir)
    mp = pytest.MonkeyPatch()
    mp.chdir(workdir)
    mp.delenv("KDTUNE_TEACHER_STORE", raising=False)
    mp.delenv("KDTUNE_DATA_DIR", raising=False)
    namespace: dict = {}
    try:
        exec(compile(readme_python_example(), "README.md", "exec"), namespace)  # its sweep runs on ray_session
    finally:
        mp.undo()
    return Path(workdir / namespace["experiment"]).resolve()


@pytest.fixture(scope="session")
def three_class_dir(tmp_path_factory) -> Path:
    """A 3-class image folder of 40x40 PNGs (60 train and 20 test images per class), written by the test."""
    from helpers import write_shape_folder

    return write_shape_folder(tmp_path_factory.mktemp("three-class") / "shapes")
