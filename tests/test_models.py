"""The model registry: seed parameter counts, output shapes, unknown names."""

from __future__ import annotations

import pytest
import torch

from kdtune.errors import UserError
from kdtune.models import check_model_name, count_parameters, create_model, list_models


def test_seed_teacher_resnet18_parameter_count():
    assert count_parameters(create_model("resnet18")) == 11_173_962


def test_seed_student_cnn3_parameter_count():
    assert count_parameters(create_model("cnn3")) == 620_810


def test_resnet20_is_about_a_quarter_million():
    assert 260_000 <= count_parameters(create_model("resnet20")) <= 280_000


def test_tinycnn_is_small():
    assert count_parameters(create_model("tinycnn")) < 50_000


def test_registry_lists_the_seed_models():
    assert {"resnet18", "resnet20", "cnn3", "tinycnn"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_num_classes_is_respected():
    with torch.no_grad():
        assert create_model("tinycnn", num_classes=3).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_same_seed_same_init():
    torch.manual_seed(5)
    a = create_model("tinycnn")
    torch.manual_seed(5)
    b = create_model("tinycnn")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("call", [create_model, check_model_name])
def test_unknown_model_lists_known_names(call):
    with pytest.raises(UserError) as info:
        call("nosuchnet")
    message = str(info.value)
    assert "nosuchnet" in message
    for name in list_models():
        assert name in message
