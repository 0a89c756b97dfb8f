"""One distillation run the seed project's way, as its own process (used by sweep_speed.py).

The seed ran one subprocess per temperature; each reloaded the dataset through
torchvision (PIL images, per-sample transforms, a DataLoader with worker
processes), reloaded the teacher checkpoint, and ran the teacher's forward pass
on every batch.  Models and loss are kdtune's, so only the pipeline differs.

    python benchmarks/seed_style.py --data-dir DIR --teacher-path T.pt --temperature 4 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
import torchvision.transforms as T
from torch.utils.data import DataLoader, Subset

from kdtune.engine.checkpoint import load_model
from kdtune.engine.losses import kd_loss
from kdtune.engine.models import create_model

# The seed project's normalisation constants (kdtune itself computes them from the training split).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def loaders(data_dir: str, train_subset: int | None, batch_size: int, seed: int):
    augment = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    plain = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    train = torchvision.datasets.ImageFolder(f"{data_dir}/train", transform=augment)
    test = torchvision.datasets.ImageFolder(f"{data_dir}/test", transform=plain)
    if train_subset:
        train = Subset(train, torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:train_subset])
    return (DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=2),
            DataLoader(test, batch_size=512, num_workers=2))


@torch.no_grad()
def test_accuracy(model, loader) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    model.train()
    return correct / len(loader.dataset)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--teacher-path", required=True)
    p.add_argument("--student", default="cnn3")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    started = time.time()
    torch.manual_seed(args.seed)
    train_loader, test_loader = loaders(args.data_dir, args.train_subset, args.batch_size, args.seed)
    teacher, _ = load_model(args.teacher_path)
    student = create_model(args.student)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3, weight_decay=1e-4)
    history = []
    for _ in range(args.epochs):
        for images, labels in train_loader:
            with torch.no_grad():
                teacher_logits = teacher(images)
            loss = kd_loss(student(images), teacher_logits, labels, args.temperature, args.alpha)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        history.append(test_accuracy(student, test_loader))
    print(json.dumps({"temperature": args.temperature, "test_acc": history[-1], "seconds": time.time() - started}))


if __name__ == "__main__":
    main()
