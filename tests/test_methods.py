"""The temperature methods (kd, ls, ctkd) against independent float64 computations written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import synthetic_splits

from kdtune.engine.config import RunConfig
from kdtune.engine.errors import UserError
from kdtune.engine.losses import LearnedTemperature, ctkd_lambda, kd_loss_terms, reverse_gradient
from kdtune.engine.models import create_model
from kdtune.engine.train import LiveTeacher, train

CPU = torch.device("cpu")
RNG = np.random.default_rng(7)
STUDENT = RNG.normal(0, 3, (5, 7))
TEACHER = RNG.normal(1, 5, (5, 7))
TARGETS = RNG.integers(0, 7, 5)


def _np_kd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """T^2 * batch mean of sum_j p_t log(p_t / p_s), softmaxes by hand in float64."""
    def softmax(z):
        e = np.exp(z / temperature - (z / temperature).max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_s, p_t = softmax(student), softmax(teacher)
    return temperature**2 * float(np.mean(np.sum(p_t * np.log(p_t / p_s), axis=1)))


def _np_ce(student: np.ndarray, targets: np.ndarray) -> float:
    z = student - student.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(targets)), targets]))


def _np_zscore(z: np.ndarray) -> np.ndarray:
    """Sun et al. 2024's standardisation, written out: unbiased std over the classes, eps 1e-7."""
    k = z.shape[1]
    mean = z.sum(axis=1, keepdims=True) / k
    std = np.sqrt(((z - mean) ** 2).sum(axis=1, keepdims=True) / (k - 1))
    return (z - mean) / (1e-7 + std)


def _t(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_ls_is_kd_of_per_sample_z_scores(temperature, alpha):
    total, ce, kd = kd_loss_terms(_t(STUDENT), _t(TEACHER), _t(TARGETS, torch.int64), temperature, alpha, method="ls")
    want_kd = _np_kd(_np_zscore(STUDENT), _np_zscore(TEACHER), temperature)
    assert kd.item() == pytest.approx(want_kd, rel=1e-5)
    assert ce.item() == pytest.approx(_np_ce(STUDENT, TARGETS), rel=1e-5)
    assert total.item() == pytest.approx(alpha * want_kd + (1 - alpha) * _np_ce(STUDENT, TARGETS), rel=1e-5)


def test_ls_ignores_logit_scale_and_shift_kd_does_not():
    """Standardised logits: a teacher scaled by 3 and shifted per sample teaches exactly the same; for kd it differs."""
    shifted = 3 * TEACHER + RNG.normal(0, 10, (5, 1))
    y = _t(TARGETS, torch.int64)
    ls = [kd_loss_terms(_t(STUDENT), _t(t), y, 2.0, 1.0, method="ls")[2].item() for t in (TEACHER, shifted)]
    kd = [kd_loss_terms(_t(STUDENT), _t(t), y, 2.0, 1.0, method="kd")[2].item() for t in (TEACHER, shifted)]
    assert ls[0] == pytest.approx(ls[1], rel=1e-6)
    assert abs(kd[0] - kd[1]) > 0.1 * kd[0]


def test_kd_method_is_the_default_loss():
    y = _t(TARGETS, torch.int64)
    default = kd_loss_terms(_t(STUDENT), _t(TEACHER), y, 3.0, 0.5)
    named = kd_loss_terms(_t(STUDENT), _t(TEACHER), y, 3.0, 0.5, method="kd")
    assert all(a.item() == b.item() for a, b in zip(default, named))
    assert default[2].item() == pytest.approx(_np_kd(STUDENT, TEACHER, 3.0), rel=1e-6)


@pytest.mark.parametrize("strength", [0.0, 0.3, 1.0])
def test_ctkd_temperature_gradient_is_the_reversed_scaled_kd_gradient(strength):
    """d loss / d theta through the reversal = -lambda * d(alpha * kd)/d theta, the latter by central differences
    of the float64 KD term at T(theta) = low + (high - low) sigmoid(theta)."""
    low, high, alpha = 1.0, 21.0, 0.7
    learned = LearnedTemperature(4.0, low, high).double()
    y = _t(TARGETS, torch.int64)
    total, _, _ = kd_loss_terms(_t(STUDENT), _t(TEACHER), y, learned(strength), alpha, method="ctkd")
    total.backward()
    theta = learned.theta.item()

    def kd_term(th):
        return alpha * _np_kd(STUDENT, TEACHER, low + (high - low) / (1 + math.exp(-th)))

    h = 1e-5
    numeric = (kd_term(theta + h) - kd_term(theta - h)) / (2 * h)
    assert abs(numeric) > 1e-3  # the KD term does depend on T here: the test can tell a sign flip
    assert learned.theta.grad.item() == pytest.approx(-strength * numeric, rel=1e-4, abs=1e-9)


def test_reverse_gradient_is_identity_forward():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    y.sum().backward()
    assert x.grad.tolist() == [-0.5, -0.5]


def test_learned_temperature_starts_at_its_initial_value_and_stays_in_bounds():
    learned = LearnedTemperature(4.0, 1.0, 21.0)
    assert learned.value().item() == pytest.approx(4.0, rel=1e-6)
    for theta in (-1e4, -30.0, 0.0, 30.0, 1e4):
        learned.theta.data.fill_(theta)
        assert 1.0 <= learned.value().item() <= 21.0
    with pytest.raises(ValueError):
        LearnedTemperature(21.0, 1.0, 21.0)


def test_ctkd_lambda_rises_from_zero_to_one_on_a_cosine():
    assert ctkd_lambda(0, 100) == 0.0
    assert ctkd_lambda(50, 100) == pytest.approx(0.5)
    assert ctkd_lambda(25, 100) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert ctkd_lambda(100, 100) == 1.0 and ctkd_lambda(10_000, 100) == 1.0
    values = [ctkd_lambda(s, 100) for s in range(101)]
    assert values == sorted(values)


def test_config_validates_methods():
    with pytest.raises(UserError, match="method"):
        RunConfig(model="tinycnn", epochs=1, method="fitnet")
    with pytest.raises(UserError, match="strictly inside ctkd_range"):
        RunConfig(model="tinycnn", epochs=1, method="ctkd", alpha=0.5, temperature=25.0)
    with pytest.raises(UserError, match="ctkd_range"):
        RunConfig(model="tinycnn", epochs=1, ctkd_range=(5.0, 2.0))
    # Without distillation the method has nothing to act on: any T is fine.
    assert RunConfig(model="tinycnn", epochs=1, method="ctkd", alpha=0.0, temperature=25.0).learns_temperature is False
    config = RunConfig(model="tinycnn", epochs=48, method="ctkd", alpha=0.5, ctkd_range=(2, 8))
    assert config.effective_ctkd_ramp_epochs == 2  # the paper's 10 of 240 epochs
    assert RunConfig.from_dict({**config.to_dict(), "ctkd_range": [2, 8]}) == config  # a JSON list reads back


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(n_train=192, n_val=64, n_test=64)


@pytest.fixture(scope="module")
def teacher(splits):
    torch.manual_seed(0)
    return LiveTeacher(create_model("tinycnn"), splits, CPU, "fp32")


def test_ctkd_learns_a_temperature_that_moves_and_stays_in_bounds(splits, teacher):
    config = RunConfig(model="tinycnn", epochs=3, recipe="strong", method="ctkd", alpha=0.9, temperature=4.0,
                       ctkd_range=(1.0, 21.0), batch_size=32)
    history = train(config, splits, CPU, teacher=teacher).history
    learned = [m["learned_temperature"] for m in history]
    assert len(learned) == 3 and all(1.0 <= t <= 21.0 for t in learned)
    assert abs(learned[-1] - 4.0) > 0.05, learned


def test_ctkd_resume_restores_the_learned_temperature(splits, teacher):
    config = RunConfig(model="tinycnn", epochs=3, recipe="strong", method="ctkd", alpha=0.9, temperature=4.0,
                       batch_size=32)
    states = []
    full = train(config, splits, CPU, teacher=teacher, on_epoch=lambda m, state: states.append(state()))
    resumed = train(config, splits, CPU, teacher=teacher, resume=states[0])
    for a, b in zip(full.history[1:], resumed.history[1:]):
        assert a["learned_temperature"] == b["learned_temperature"] and a["train_loss"] == b["train_loss"]


def test_methods_differ_in_training_and_kd_is_unchanged(splits, teacher):
    """ls and ctkd train other students than kd from the same seed; kd without `method` is kd."""
    base = dict(model="tinycnn", epochs=1, alpha=0.5, temperature=4.0, batch_size=64)
    losses = {m: train(RunConfig(**base, method=m), splits, CPU, teacher=teacher).final["train_loss"]
              for m in ("kd", "ls", "ctkd")}
    assert len(set(losses.values())) == 3
    assert train(RunConfig(**base), splits, CPU, teacher=teacher).final["train_loss"] == losses["kd"]


# ----------------------------------------------------------------------------- a methods grid, end to end


@pytest.fixture(scope="module")
def methods_sweep(ray_session, mini_data_dir, tmp_path_factory):
    """`kdtune tune --grid` over the three methods at one T (real images, 2 seeds, 2 epochs), then its report."""
    from kdtune.cli import tune

    base = tmp_path_factory.mktemp("methods")
    (base / "spaces").mkdir()
    (base / "spaces" / "three.yaml").write_text("grid:\n  method: [kd, ls, ctkd]\n  temperature: [4]\n  alpha: 0.9\n")
    code = tune.main(["--grid", str(base / "spaces" / "three.yaml"), "--preset", "quick", "--teacher", "tinycnn",
                      "--seeds", "2", "--epochs", "2", "--teacher-epochs", "1", "--train-subset", "100",
                      "--val-size", "20", "--ctkd-ramp-epochs", "1", "--data-dir", str(mini_data_dir),
                      "--name", "methods", "--results-dir", str(base / "results"),
                      "--teacher-store", str(base / "teachers")])
    assert code == 0
    return base / "results" / "methods"


def _tune_members(storage) -> list[dict]:
    """Every seed's last reported epoch, read from the result.json files Tune wrote (a pack's `s<seed>/` keys)."""
    import json

    out = []
    # The baseline trains in the sweep's experiment, its config naming its phase.
    for result in sorted((storage / "sweep").glob("*/result.json")):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        config = lines[0]["config"]
        for seed in config["seeds"]:
            last = {k.split("/", 1)[1]: v for k, v in lines[-1].items() if k.startswith(f"s{seed}/")}
            out.append({"phase": config.get("phase", "sweep"), "method": config.get("method", "kd"), "seed": seed,
                        **last})
    return out


@pytest.mark.slow
def test_a_methods_grid_runs_end_to_end_through_the_report(methods_sweep):
    import json

    import pandas as pd

    from kdtune.report.summary import write_report

    report = write_report(methods_sweep)
    table = pd.read_csv(methods_sweep / "report" / "summary.csv")
    sweep = table[table["phase"] == "sweep"]
    assert list(sweep["method"]) == ["kd", "ls", "ctkd"]  # grouped by method, in the methods' order
    assert (sweep["seeds_finished"] == 2).all()
    members = _tune_members(methods_sweep)
    ctkd = [m for m in members if m["method"] == "ctkd"]
    assert len(ctkd) == 2 and all(1.0 <= m["learned_temperature"] <= 21.0 for m in ctkd)
    want = np.mean([m["learned_temperature"] for m in ctkd])
    row = sweep[sweep["method"] == "ctkd"].iloc[0]
    assert row["learned_temperature_mean"] == pytest.approx(want, rel=1e-9)
    assert row["learned_temperature_std"] == pytest.approx(np.std([m["learned_temperature"] for m in ctkd], ddof=1),
                                                           rel=1e-9)
    assert sweep[sweep["method"] != "ctkd"]["learned_temperature_mean"].isna().all()
    # Paired gain of each method: its seeds minus the baseline's, by hand.
    base = {m["seed"]: m["test_acc"] for m in members if m["phase"] == "baseline"}
    for method in ("kd", "ls", "ctkd"):
        gains = [m["test_acc"] - base[m["seed"]] for m in members if m["phase"] == "sweep" and m["method"] == method]
        assert sweep[sweep["method"] == method].iloc[0]["gain_mean"] == pytest.approx(np.mean(gains), abs=1e-12)
    results = json.loads((methods_sweep / "temperature_results.json").read_text())
    assert set(results) == {"kd", "ls", "ctkd"} and set(results["ls"]) == {"4"}
    markdown = report["markdown"]
    assert "Best of each method" in markdown
    for label in ("KD: T = 4, α = 0.9", "LS: T = 4, α = 0.9", "CTKD: T₀ = 4, α = 0.9"):
        assert label in markdown
    assert "learned T" in markdown
    assert "learned_temperature.png" in [p.name for p in report["figures"]]


def test_an_experiment_of_an_older_kdtune_reads_as_plain_kd():
    """Trials whose config and results name no method (kdtune before methods) are `kd` in every table."""
    import pandas as pd

    from kdtune.report.results import Member, trial_table
    from kdtune.report.stats import config_table

    def trial(phase_id: str, alpha: float, seed: int):
        frame = pd.DataFrame([{"epoch": 1, "val_acc": 0.5 + seed / 10, "test_acc": 0.4 + alpha / 10 + seed / 100,
                               "val_ece": 0.1, "val_nll": 1.0, "temperature": 4.0, "alpha": alpha, "seed": seed}])
        return Member(f"{phase_id}_s{seed}", {"temperature": 4.0, "alpha": alpha, "seed": seed}, "TERMINATED", 0, ""), frame

    record = {"settings": {"epochs": 1}}
    frames = {"baseline": [trial("b", 0.0, s) for s in (0, 1)], "sweep": [trial("k", 0.5, s) for s in (0, 1)],
              "confirm": []}
    table = trial_table(record, frames)
    assert list(table["method"]) == ["kd"] * 4 and table["final_learned_temperature"].isna().all()
    configs = config_table(table.drop(columns=["method", "final_learned_temperature"]))
    assert list(configs["method"]) == ["kd", "kd"]
    assert configs.iloc[1]["gain_mean"] == pytest.approx(0.05)


def test_optuna_spaces_sample_the_method_as_a_categorical():
    from ray.tune.search.sample import Categorical

    from kdtune.sweep.runner import _tune_distribution

    domain = _tune_distribution(("categorical", ["kd", "ls", "ctkd"]))
    assert isinstance(domain, Categorical) and list(domain.categories) == ["kd", "ls", "ctkd"]
    assert _tune_distribution(["loguniform", 1.5, 16.0]).lower == 1.5  # as read back from experiment.json
