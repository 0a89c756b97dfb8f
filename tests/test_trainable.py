"""Trial checkpoints: a checkpoint saved on a GPU node resumes on a CPU-only node."""

from __future__ import annotations

import pytest
import torch
from helpers import synthetic_splits

from kdtune.engine.config import RunConfig
from kdtune.engine.train import train
from kdtune.sweep.trainable import load_trial_state

CPU = torch.device("cpu")


def save_as_if_on_cuda(obj, path) -> None:
    """torch.save, but every tensor is recorded as living on cuda:0, as on a GPU node."""
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    try:
        torch.save(obj, path)
    finally:
        mp.undo()


def test_a_checkpoint_saved_on_a_gpu_resumes_on_the_cpu(tmp_path, one_thread):
    splits = synthetic_splits(n_train=128, n_val=32, n_test=32)
    config = RunConfig(model="tinycnn", epochs=2, batch_size=64)
    states = {}
    full = train(config, splits, CPU, on_epoch=lambda m, s: states.__setitem__(m["epoch"], s()))
    path = tmp_path / "state.pt"
    save_as_if_on_cuda({**states[1], "cuda_rng": torch.zeros(16, dtype=torch.uint8)}, path)
    if not torch.cuda.is_available():  # the simulation is real: without a map_location this file does not load here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)

    state = load_trial_state(str(path))
    assert all(t.device == CPU for t in state["model"].values()) and state["rng"].device == CPU
    resumed = train(config, splits, CPU, resume=state)
    assert resumed.history[-1]["val_acc"] == full.history[-1]["val_acc"]
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_checkpoints_every_k_epochs_or_as_often_as_keeps_writing_cheap(monkeypatch):
    from kdtune.sweep import trainable

    every3 = trainable.CheckpointPolicy(3, epochs=8)
    assert [e for e in range(1, 9) if every3.due(e)] == [3, 6, 8]  # and always the last
    assert every3.due(4, diverged=True)  # a diverged pack stops: its state is kept
    clock = [100.0]
    monkeypatch.setattr(trainable.time, "perf_counter", lambda: clock[0])
    auto = trainable.CheckpointPolicy(None, epochs=50)
    assert auto.due(1)  # nothing measured yet: the first epoch writes, and times the write
    auto.written(0.5)  # half a second to write: due again after 20 x 0.5 = 10 s of training
    clock[0] += 6.0
    assert not auto.due(2)
    clock[0] += 4.0
    assert auto.due(3)
    auto.written(0.01)
    clock[0] += 0.3
    assert auto.due(4)  # a cheap write is done every epoch that takes 0.2 s or more
