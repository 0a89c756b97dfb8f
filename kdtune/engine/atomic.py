"""Crash-safe file writes: write a temporary file beside the target, then rename.

A crash or Ctrl-C mid-write leaves the old file (or none), never half a file
that a later run would load.  A killed writer does leave its temporary file
(`.NAME.*.tmp`): the next write into that folder, or the next run opening it,
removes it once it is stale (`remove_stale_temps`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

# A writer touches its temporary file with every write and is done in seconds to minutes; one untouched this
# long has no writer left.
STALE_AFTER_S = 30 * 60


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then rename tmp_path over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(folder: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> None:
    """Remove the temporary files and folders (`.*.tmp`) in `folder` untouched for `older_than_s` seconds."""
    # Age rather than the writer's pid: stores and caches are shared by processes on several machines (Ray
    # nodes, containers) over one file system, where a pid from elsewhere means nothing here and pids are reused.
    # A young temporary file may belong to a concurrent writer, and is left alone.
    try:
        with os.scandir(folder) as entries:
            stale = [e for e in entries if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:  # no folder yet, or not readable: nothing of ours to remove
        return
    now = time.time()
    for entry in stale:
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than_s:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass  # removed meanwhile by another run, or not ours to remove: it is only a leftover


def save_json(path: str | os.PathLike, obj) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")

    return atomic_write(path, write)


def save_torch(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
