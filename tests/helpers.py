"""Test data shared by several test modules: learnable synthetic splits and linked subsets of real images."""

from __future__ import annotations

from pathlib import Path

import torch

from kdtune.data import Splits

CLASSES = 10


def _learnable(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one bright 8x8 square whose place on a 3x3 grid (or its absence) is the label."""
    labels = (torch.arange(n) % CLASSES)[torch.randperm(n, generator=g)]
    images = torch.randint(0, 100, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    for i, label in enumerate(labels.tolist()):
        if label < 9:
            r, c = 2 + 10 * (label // 3), 2 + 10 * (label % 3)
            images[i, :, r : r + 8, c : c + 8] = 255
    return images, labels


def synthetic_splits(n_train: int = 256, n_val: int = 64, n_test: int = 64, seed: int = 0) -> Splits:
    g = torch.Generator().manual_seed(seed)
    parts = [_learnable(n, g) for n in (n_train, n_val, n_test)]
    return Splits(*parts[0], *parts[1], *parts[2], tuple(f"c{i}" for i in range(CLASSES)), key=f"synthetic-{seed}")


def link_image_subset(source: Path, root: Path, train_per_class: int, test_per_class: int) -> Path:
    """An image folder under `root` holding the first N real images of each class of `source`, as symlinks."""
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted((source / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                (target / image.name).symlink_to(image)
    return root
