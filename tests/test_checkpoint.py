"""Saving and safely loading model checkpoints."""

from __future__ import annotations

import pickle

import pytest
import torch

from kdtune.engine.checkpoint import FORMAT, load_model, read_checkpoint, save_model
from kdtune.engine.errors import UserError
from kdtune.engine.models import create_model


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("tinycnn")
    with torch.no_grad():  # non-default BN statistics, so a fresh model would not match by chance
        model.features[1].running_mean.uniform_()
    path = save_model(tmp_path / "sub" / "m.pt", model, "tinycnn", {"val_acc": 0.5, "note": "hi"})
    return path, model


def test_roundtrip(saved):
    path, model = saved
    loaded, meta = load_model(path, expected_arch="tinycnn")
    assert meta == {"val_acc": 0.5, "note": "hi"}
    assert not loaded.training
    original = model.state_dict()
    assert set(loaded.state_dict()) == set(original)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, original[name]), name
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_no_temporary_files_left(saved):
    path, _ = saved
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]


def test_any_architecture_without_expectation(saved):
    path, _ = saved
    loaded, _ = load_model(path)
    assert type(loaded).__name__ == "ConvNet"


def test_wrong_architecture_is_refused(saved):
    path, _ = saved
    with pytest.raises(UserError) as info:
        load_model(path, expected_arch="resnet20")
    assert "tinycnn" in str(info.value) and "resnet20" in str(info.value) and str(path) in str(info.value)


def test_class_count_is_saved_and_checked(tmp_path):
    path = save_model(tmp_path / "m.pt", create_model("tinycnn", 3), "tinycnn", {}, num_classes=3)
    loaded, _ = load_model(path, num_classes=3)
    assert loaded.head[-1].out_features == 3
    with pytest.raises(UserError, match="3-class model, but the data have 100 classes"):
        load_model(path, num_classes=100)


def test_checkpoint_without_a_class_count_is_cifar10(tmp_path):
    path = save_model(tmp_path / "old.pt", create_model("tinycnn"), "tinycnn", {})
    payload = torch.load(path, weights_only=True)
    del payload["num_classes"]  # as written before class counts were saved
    torch.save(payload, path)
    loaded, _ = load_model(path, num_classes=10)
    assert loaded.head[-1].out_features == 10


def test_spec_checkpoint_roundtrip(tmp_path):
    model = create_model("torchvision:resnet18", 5)
    path = save_model(tmp_path / "tv.pt", model, "torchvision:resnet18", {}, num_classes=5)
    loaded, _ = load_model(path, expected_arch="torchvision:resnet18", num_classes=5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = save_model(tmp_path / "liar.pt", create_model("cnn3"), "tinycnn", {})  # says tinycnn, holds cnn3
    with pytest.raises(UserError, match="does not match"):
        load_model(path, expected_arch="tinycnn")


def test_truncated_file(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(UserError) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nothing.pt")


def test_plain_tensor_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(create_model("tinycnn").state_dict(), path)  # a bare state dict, no kdtune marker
    with pytest.raises(UserError, match=FORMAT):
        read_checkpoint(path)


class _Payload:
    """Unpickling this creates a marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"format": FORMAT, "arch": "tinycnn", "state_dict": {}, "meta": {"x": _Payload(str(marker))}}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UserError) as info:
        load_model(path, expected_arch="tinycnn")
    assert str(path) in str(info.value)
    assert not marker.exists()

    # The payload is live: an unsafe loader would have created the marker.
    if writer == "pickle":
        with open(path, "rb") as f:
            pickle.load(f)
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()
