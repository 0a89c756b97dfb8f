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
