"""Models: the registry (seed parameter counts, output shapes), torchvision, timm and module:callable specs,
and every bad spec as a one-line error naming it."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from kdtune.engine.device import prepare
from kdtune.engine.errors import UserError
from kdtune.engine.models import (
    AdaptiveAvgPool,
    check_model,
    check_model_name,
    count_parameters,
    create_model,
    deterministic_pools,
    list_models,
    model_spec,
    storage_name,
    window_means,
)

HAS_TIMM = importlib.util.find_spec("timm") is not None


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


@pytest.mark.parametrize("size", [(32, 32), (40, 40), (64, 64), (40, 56)])
@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name, size):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_convnet_at_32x32_is_unchanged_by_its_pooling():
    """The pooling that lets ConvNets take any size is the identity at 32x32: the same numbers as before it."""
    torch.manual_seed(0)
    model = create_model("cnn3").eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        without = model.head(model.features[:-1](images))
        assert torch.equal(model(images), without)


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


# ----------------------------------------------------------------------------- specs from anywhere


def test_torchvision_spec_builds_an_untrained_model_with_the_class_count():
    model = check_model("torchvision:resnet18", num_classes=3, image_size=(40, 40))
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 3


@pytest.mark.parametrize("shape, size", [((2, 5, 40, 40), 4), ((2, 5, 37, 29), 4), ((3, 7, 9), (2, 3)),
                                         ((2, 4, 12, 10), (None, 3)), ((1, 3, 6, 6), 6)])
def test_window_means_equal_adaptive_average_pooling_and_its_gradient(shape, size):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    if x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)  # as prepare() lays a model's activations out
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = torch.nn.functional.adaptive_avg_pool2d(a, size), window_means(b, size)
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(b.grad, a.grad)


def test_deterministic_pools_replace_pools_to_more_than_1x1_and_keep_outputs_and_state_keys():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d((3, 3)),
                                torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1)), torch.nn.Flatten()).eval()
    x = torch.randn(2, 3, 19, 19)
    with torch.no_grad():
        before, keys = model(x), list(model.state_dict())
        deterministic_pools(model)
        after = model(x)
    assert isinstance(model[1], AdaptiveAvgPool) and model[1].output_size == (3, 3)
    assert type(model[2][0]) is torch.nn.AdaptiveAvgPool2d  # 1x1: PyTorch computes it as a mean already
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(after, before)


def test_pools_take_the_matrix_form_on_cuda_under_deterministic_algorithms_only(monkeypatch):
    """GridPool (cnn3 and tinycnn on images other than 32x32) and a replaced pool go through window_means
    exactly where PyTorch would refuse the adaptive pool's backward; a CPU's numbers are kept as they were."""
    import kdtune.engine.models as models

    taken = []
    monkeypatch.setattr(models, "window_means", lambda x, size: taken.append(size) or x[..., :size, :size])
    x = torch.randn(1, 2, 8, 8)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        models.GridPool(4)(x)  # a CPU tensor: the adaptive pool
        assert taken == []
        monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
        models.GridPool(4)(x)
        models.AdaptiveAvgPool(2)(x)
        assert taken == [4, 2]
        torch.use_deterministic_algorithms(False)
        models.GridPool(4)(x)
        assert taken == [4, 2]
    finally:
        torch.use_deterministic_algorithms(was)


def test_prepare_keeps_a_cpu_models_pools_under_deterministic_algorithms():
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        model = prepare(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(3)), torch.device("cpu"))
        assert type(model[0]) is torch.nn.AdaptiveAvgPool2d
    finally:
        torch.use_deterministic_algorithms(was)


def test_module_callable_spec_is_called_with_num_classes():
    from helpers import tiny_a

    model = create_model("helpers:tiny_a", num_classes=7)
    assert model.head[-1].out_features == 7
    assert count_parameters(model) == count_parameters(tiny_a(num_classes=7))


def test_module_callable_spec_resolves_against_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_models.py").write_text(
        "from kdtune.engine.models import create_model\n"
        "def build(num_classes):\n    return create_model('tinycnn', num_classes)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_models", raising=False)
    assert check_model("cwd_models:build", num_classes=4, image_size=(32, 32)).head[-1].out_features == 4


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install 'kdtune[timm]')")
def test_timm_spec_builds_an_untrained_model_with_the_class_count():
    model = check_model("timm:test_resnet", num_classes=3, image_size=(40, 40))
    assert model.get_classifier().out_features == 3


def test_timm_spec_without_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(UserError) as info:
        create_model("timm:resnet18")
    assert "timm:resnet18" in str(info.value) and "kdtune[timm]" in str(info.value)


def test_model_spec_names_a_builder_by_module_and_qualname():
    from helpers import tiny_b

    assert model_spec(tiny_b) == "helpers:tiny_b"
    assert model_spec("torchvision:resnet18") == "torchvision:resnet18"


def test_model_spec_refuses_what_workers_could_not_import():
    def local(num_classes):
        return create_model("tinycnn", num_classes)

    for builder in (local, lambda num_classes: local(num_classes)):
        with pytest.raises(UserError, match="cannot be imported by name"):
            model_spec(builder)


def test_storage_name_is_a_plain_file_name():
    assert storage_name("resnet18") == "resnet18"
    assert storage_name("torchvision:resnet18") == "torchvision_resnet18"
    assert storage_name("my.pkg:Net.build") == "my.pkg_Net.build"


BAD_MODULE = """
import torch
NOT_CALLABLE = 3
def returns_int(num_classes):
    return 3
def no_num_classes():
    return torch.nn.Linear(3, 3)
def raises(num_classes):
    raise ValueError("refusing to build")
def wrong_output(num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes + 1))
def wrong_input(num_classes):
    return torch.nn.Linear(5, num_classes)
"""


@pytest.fixture
def bad_models(tmp_path, monkeypatch):
    (tmp_path / "bad_models.py").write_text(BAD_MODULE)
    (tmp_path / "broken_import.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("bad_models", "broken_import", "raises_on_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)


BAD_SPECS = [
    ("nosuchnet", "unknown model"),
    ("", "invalid model"),
    (":build", "invalid model"),
    ("bad_models:", "invalid model"),
    ("torchvision:nosuchnet", "torchvision has no classification model"),
    ("torchvision:fasterrcnn_resnet50_fpn", "torchvision has no classification model"),  # detection, not classification
    ("no_such_module_xyz:build", "no module named 'no_such_module_xyz'"),
    ("no_such_pkg_xyz.models:build", "no module named 'no_such_pkg_xyz.models'"),
    ("broken_import:build", "no_such_dependency_xyz"),
    ("raises_on_import:build", "boom at import"),
    ("bad_models:missing", "has no attribute 'missing'"),
    ("bad_models:NOT_CALLABLE", "not a callable"),
    ("bad_models:returns_int", "returned int, not a torch.nn.Module"),
    ("bad_models:no_num_classes", "failed to build with num_classes=3"),
    ("bad_models:raises", "refusing to build"),
    ("bad_models:wrong_output", "expected logits of shape (1, 3)"),
    ("bad_models:wrong_input", "fails on a 3x40x40 image"),
]
if HAS_TIMM:
    BAD_SPECS.append(("timm:nosuchnet", "timm has no model"))


@pytest.mark.parametrize("spec, why", BAD_SPECS)
def test_every_bad_spec_is_a_one_line_error_naming_it(bad_models, spec, why):
    with pytest.raises(UserError) as info:
        check_model(spec, num_classes=3, image_size=(40, 40))
    message = str(info.value)
    assert repr(spec) in message and why in message, message
    assert "\n" not in message
