"""RunConfig: strict from_dict, and validation that names the bad value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdtune.engine.config import RECIPES, RunConfig, warmup_epochs
from kdtune.engine.errors import UserError

BASE = {"model": "tinycnn", "epochs": 2}


def test_from_dict_roundtrip():
    config = RunConfig.from_dict({**BASE, "temperature": 2.5, "alpha": 0.25, "seed": 3, "recipe": "strong"})
    assert config == RunConfig(model="tinycnn", epochs=2, temperature=2.5, alpha=0.25, seed=3, recipe="strong")
    assert RunConfig.from_dict(config.to_dict()) == config


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(UserError, match="temprature"):
        RunConfig.from_dict({**BASE, "temprature": 4.0})


def test_from_dict_requires_model_and_epochs():
    with pytest.raises(UserError, match="epochs"):
        RunConfig.from_dict({"model": "tinycnn"})


@pytest.mark.parametrize(
    "key, value",
    [
        ("epochs", "3"),
        ("epochs", 2.5),
        ("epochs", True),
        ("alpha", True),
        ("alpha", "0.5"),
        ("temperature", "4"),
        ("temperature", [4.0]),
        ("model", 3),
        ("seed", 1.5),
        ("lr", "0.1"),
    ],
)
def test_from_dict_rejects_wrong_types(key, value):
    with pytest.raises(UserError) as info:
        RunConfig.from_dict({**BASE, key: value})
    assert key in str(info.value) and repr(value) in str(info.value)


def test_from_dict_refuses_none_for_required_values():
    with pytest.raises(UserError, match="epochs"):
        RunConfig.from_dict({"model": "tinycnn", "epochs": None})


def test_from_dict_accepts_ints_for_floats():
    config = RunConfig.from_dict({**BASE, "temperature": 4, "alpha": 1, "lr": 1})
    assert config.temperature == 4.0 and isinstance(config.temperature, float)
    assert config.alpha == 1.0 and isinstance(config.alpha, float)
    assert config.lr == 1.0 and isinstance(config.lr, float)


def test_from_dict_accepts_integral_floats_for_ints():
    config = RunConfig.from_dict({**BASE, "epochs": 3.0, "batch_size": 64.0})
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.batch_size == 64 and isinstance(config.batch_size, int)


def test_from_dict_accepts_numpy_scalars():
    config = RunConfig.from_dict(
        {
            "model": "tinycnn",
            "epochs": np.int64(3),
            "temperature": np.float32(2.5),
            "alpha": np.float64(0.75),
            "seed": np.int32(7),
            "batch_size": np.int64(32),
        }
    )
    assert config == RunConfig(model="tinycnn", epochs=3, temperature=2.5, alpha=0.75, seed=7, batch_size=32)
    for value in config.to_dict().values():
        assert not isinstance(value, np.generic)


def test_from_dict_accepts_none_for_optional_values():
    config = RunConfig.from_dict({**BASE, "lr": None, "batch_size": None})
    assert config.lr is None and config.effective_lr == RECIPES["seed"].lr
    assert config.effective_batch_size == RECIPES["seed"].batch_size


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("temperature", 0.0, "0.0"),
        ("temperature", -1.0, "-1.0"),
        ("temperature", math.nan, "nan"),
        ("temperature", math.inf, "inf"),
        ("alpha", 1.5, "1.5"),
        ("alpha", -0.1, "-0.1"),
        ("alpha", math.nan, "nan"),
        ("epochs", 0, "0"),
        ("epochs", -3, "-3"),
        ("batch_size", 0, "0"),
        ("lr", 0.0, "0.0"),
        ("lr", math.nan, "nan"),
        ("label_smoothing", 1.0, "1.0"),
        ("precision", "fp16", "fp16"),
        ("recipe", "nosuch", "nosuch"),
        ("model", "nosuchnet", "nosuchnet"),
    ],
)
def test_invalid_values_raise_naming_the_value(key, value, shown):
    values = {**BASE, key: value}
    with pytest.raises(UserError) as info:
        RunConfig(**values)
    assert shown in str(info.value)
    # from_dict goes through the same checks.
    with pytest.raises(UserError) as info:
        RunConfig.from_dict(values)
    assert shown in str(info.value)


def test_unknown_recipe_lists_known_recipes():
    with pytest.raises(UserError) as info:
        RunConfig(model="tinycnn", epochs=1, recipe="nosuch")
    for name in RECIPES:
        assert name in str(info.value)


def test_boundary_values_are_accepted():
    RunConfig(model="tinycnn", epochs=1, alpha=0.0, temperature=1e-3, batch_size=1)
    RunConfig(model="tinycnn", epochs=1, alpha=1.0, label_smoothing=0.0)


def test_label_smoothing_is_the_same_with_and_without_a_teacher():
    # The no-KD baseline must not be smoothed unlike its distilled students: that would confound the comparison.
    for recipe in RECIPES:
        baseline = RunConfig(model="tinycnn", epochs=1, recipe=recipe, alpha=0.0)
        distilled = RunConfig(model="tinycnn", epochs=1, recipe=recipe, alpha=0.5, temperature=8.0)
        assert baseline.label_smoothing == distilled.label_smoothing == 0.0
    assert RunConfig(model="tinycnn", epochs=1, alpha=0.0, label_smoothing=0.2).label_smoothing == 0.2


@pytest.mark.parametrize("recipe, epochs, warmup", [("strong", 30, 6), ("strong", 6, 2), ("strong", 5, 1),
                                                    ("seed", 30, 0), ("cosine", 30, 0)])
def test_warmup_epochs(recipe, epochs, warmup):
    assert warmup_epochs(recipe, epochs) == warmup


def test_warmup_epochs_cover_the_schedules_warmup_steps():
    """Every step of the rising learning rate falls inside the warm-up epochs, never after them."""
    from kdtune.engine.train import lr_factor

    for epochs in (3, 6, 10, 30):
        for steps_per_epoch in (1, 7, 20, 196):
            config = RunConfig(model="tinycnn", epochs=epochs, recipe="strong")
            factors = [lr_factor(s, steps_per_epoch, config) for s in range(steps_per_epoch * epochs)]
            rising = [s for s in range(len(factors) - 1) if factors[s] < factors[s + 1]]
            assert rising and rising[-1] // steps_per_epoch + 1 <= config.warmup_epochs, (epochs, steps_per_epoch)


def test_config_is_frozen():
    config = RunConfig(**BASE)
    with pytest.raises(Exception):
        config.epochs = 5  # type: ignore[misc]
