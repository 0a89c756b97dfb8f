"""Saving and safely loading models with their metadata.

A checkpoint is a plain dict of tensors and JSON-like values, loaded with
`torch.load(weights_only=True)`: a pickled payload in a hostile file is
refused, never executed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from kdtune.engine.atomic import save_torch
from kdtune.engine.errors import UserError, first_line
from kdtune.engine.models import NUM_CLASSES, create_model

FORMAT = "kdtune-model-v1"


def save_model(
    path: str | os.PathLike, model: nn.Module, arch: str, meta: dict, num_classes: int = NUM_CLASSES
) -> Path:
    """Save `model` (built by the spec `arch` for `num_classes` classes) with its metadata."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "arch": arch, "num_classes": num_classes, "state_dict": state, "meta": meta}
    return save_torch(path, payload)


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's refusal opens with advice on how to load the file unsafely, and ends its reason with advice on
        # how to allow the object: the reason's first sentence is what the user needs.
        _, marker, reason = str(error).partition("WeightsUnpickler error:")
        why = reason.strip().split(". ")[0] if marker and reason.strip() else error
        raise UserError(f"{path} holds Python objects besides tensors and plain values, refused: loading them could "
                        f"run code ({first_line(why)})") from None
    except Exception as error:
        raise UserError(f"{path} is not a loadable kdtune checkpoint ({first_line(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a kdtune model checkpoint (no {FORMAT!r} marker)")
    return payload


def load_model(
    path: str | os.PathLike, expected_arch: str | None = None, num_classes: int | None = None
) -> tuple[nn.Module, dict]:
    """Return (model on CPU in eval mode, metadata). A checkpoint of another architecture or class count is refused."""
    payload = read_checkpoint(path)
    arch = payload["arch"]
    if expected_arch is not None and arch != expected_arch:
        raise UserError(f"checkpoint {path} holds a {arch!r} model, but {expected_arch!r} was asked for")
    classes = int(payload.get("num_classes", NUM_CLASSES))  # checkpoints before class counts were all CIFAR-10
    if num_classes is not None and classes != num_classes:
        raise UserError(f"checkpoint {path} holds a {classes}-class model, but the data have {num_classes} classes")
    model = create_model(arch, classes)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise UserError(f"checkpoint {path} does not match architecture {arch!r}: {first_line(error)}") from None
    return model.eval(), dict(payload.get("meta", {}))


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
