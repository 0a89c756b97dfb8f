"""The training step waits for nothing on the host: no tensor built from Python values, no `.item()`, in any
method's step (on a GPU each would be a host-device copy or a synchronisation, and would stop the step from
being captured as a CUDA graph).  Counted on the CPU, where the same code runs."""

from __future__ import annotations

import pytest
import torch
from helpers import synthetic_splits

from kdtune.engine import train as loop
from kdtune.engine.config import RunConfig
from kdtune.engine.data import normalize
from kdtune.engine.losses import METHODS
from kdtune.engine.teacher import CachedTeacher, LogitCache

CPU = torch.device("cpu")
FROM_PYTHON = ("tensor", "as_tensor", "scalar_tensor")


@pytest.mark.parametrize("method", METHODS)
def test_no_step_builds_a_tensor_from_python_values_or_reads_one_back(monkeypatch, method):
    splits = synthetic_splits(96, 16, 16)
    cache = LogitCache(train=torch.randn(2, 96, splits.num_classes).half(), val=torch.randn(16, splits.num_classes).half(),
                       test=torch.randn(16, splits.num_classes).half(), aug_seed=1, splits_key=splits.key)
    teacher = CachedTeacher(cache, splits, CPU)
    calls: list[str] = []
    inside = [False]

    def counting(name, original):
        def wrapper(*args, **kwargs):
            if inside[0]:
                calls.append(name)
            return original(*args, **kwargs)
        return wrapper

    for name in FROM_PYTHON:
        monkeypatch.setattr(torch, name, counting(name, getattr(torch, name)))
    monkeypatch.setattr(torch.Tensor, "item", counting("item", torch.Tensor.item))
    real_epoch = loop._train_epoch

    def epoch(*args, **kwargs):
        inside[0] = True
        try:
            return real_epoch(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(loop, "_train_epoch", epoch)
    normalize(splits.train_images[:1], splits.mean, splits.std)  # its constants are made once per device, here
    config = RunConfig(model="tinycnn", epochs=2, batch_size=16, alpha=0.5, temperature=4.0, aug_seed=1,
                       method=method, precision="fp32", recipe="strong")
    result = loop.train(config, splits, CPU, teacher=teacher)
    assert len(result.history) == 2 and all(h["train_kd"] > 0 for h in result.history)
    assert calls == []  # 12 steps, and not one tensor from Python values nor one value read back


def test_a_cache_kept_on_the_host_teaches_exactly_as_one_on_the_device():
    """The host path (a cache too large for the device: one epoch's slice copied at a time), forced on the CPU."""
    splits = synthetic_splits(96, 16, 16)
    cache = LogitCache(train=torch.randn(2, 96, splits.num_classes).half(), val=torch.randn(16, splits.num_classes).half(),
                       test=torch.randn(16, splits.num_classes).half(), aug_seed=1, splits_key=splits.key)
    config = RunConfig(model="tinycnn", epochs=2, batch_size=32, alpha=0.7, temperature=2.0, aug_seed=1,
                       precision="fp32", recipe="strong")
    results = []
    for on_host in (False, True):
        teacher = CachedTeacher(cache, splits, CPU, on_host=on_host)
        assert teacher.on_host is on_host
        results.append(loop.train(config, splits, CPU, teacher=teacher).history)
    strip = [[{k: v for k, v in h.items() if k not in ("epoch_s", "images_per_s")} for h in r] for r in results]
    assert strip[0] == strip[1] and strip[0][-1]["train_kd"] > 0


@pytest.mark.slow
def test_a_compiled_step_trains_as_the_eager_one_to_float_rounding():
    splits = synthetic_splits(96, 16, 16)
    cache = LogitCache(train=torch.randn(1, 96, splits.num_classes).half(), val=torch.randn(16, splits.num_classes).half(),
                       test=torch.randn(16, splits.num_classes).half(), aug_seed=1, splits_key=splits.key)
    teacher = CachedTeacher(cache, splits, CPU)
    config = RunConfig(model="tinycnn", epochs=1, batch_size=32, alpha=0.7, temperature=2.0, aug_seed=1,
                       precision="fp32", recipe="strong")
    eager = loop.train(config, splits, CPU, teacher=teacher).final
    compiled = loop.train(config, splits, CPU, teacher=teacher, compiled=True).final
    assert compiled["compile_s"] > 0 and "compile_s" not in eager
    for key in ("train_loss", "train_kd", "val_nll", "test_kl"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4), key
