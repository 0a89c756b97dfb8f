"""DKD, the two control teachers and the fidelity diagnostics, against independent float64 computations and
hand-made examples written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import synthetic_splits

from kdtune.engine.config import RunConfig
from kdtune.engine.data import within_class_donors
from kdtune.engine.losses import dkd_warmup, kd_loss_terms, true_class_probability, uniform_teacher_logits
from kdtune.engine.metrics import fidelity_metrics
from kdtune.engine.train import train

CPU = torch.device("cpu")
RNG = np.random.default_rng(11)
STUDENT = RNG.normal(0, 3, (6, 5))
TEACHER = RNG.normal(1, 6, (6, 5))
TARGETS = RNG.integers(0, 5, 6)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_dkd(student, teacher, targets, temperature, beta):
    """Zhao et al.'s TCKD and NCKD per sample, written from the paper's definitions in float64: binary
    (target, rest) distributions, and the distributions over the non-target classes renormalised."""
    p_s, p_t = _softmax(student / temperature), _softmax(teacher / temperature)
    rows = np.arange(len(targets))
    b_s = np.stack([p_s[rows, targets], 1 - p_s[rows, targets]], axis=1)
    b_t = np.stack([p_t[rows, targets], 1 - p_t[rows, targets]], axis=1)
    tckd = np.sum(b_t * np.log(b_t / b_s), axis=1)
    nckd = np.zeros(len(targets))
    for i, y in enumerate(targets):
        keep = np.arange(student.shape[1]) != y
        q_s, q_t = p_s[i, keep] / p_s[i, keep].sum(), p_t[i, keep] / p_t[i, keep].sum()
        nckd[i] = np.sum(q_t * np.log(q_t / q_s))
    kl = np.sum(p_t * np.log(p_t / p_s), axis=1)
    return tckd, nckd, kl, p_t[rows, targets]


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("beta", [1.0, 8.0])
def test_dkd_is_tckd_plus_beta_nckd_scaled_by_t_squared(temperature, beta):
    tckd, nckd, _, _ = _np_dkd(STUDENT, TEACHER, TARGETS, temperature, beta)
    want = temperature**2 * np.mean(tckd + beta * nckd)
    ce = -np.mean(np.log(_softmax(STUDENT)[np.arange(len(TARGETS)), TARGETS]))
    total, got_ce, kd = kd_loss_terms(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS), temperature,
                                      0.5, method="dkd", dkd_beta=beta, kd_scale=0.25)
    assert kd.item() == pytest.approx(want, rel=1e-5)
    assert got_ce.item() == pytest.approx(ce, rel=1e-5)
    assert total.item() == pytest.approx(0.5 * 0.25 * want + 0.5 * ce, rel=1e-5)  # the warm-up scales KD only


def test_dkd_decomposition_reproduces_the_kd_term_exactly():
    """KL = TCKD + (1 - p_t) NCKD per sample (the paper's eq. 4): with beta = 1 - p_t per sample, DKD is KD."""
    temperature = 3.0
    tckd, nckd, kl, p_target = _np_dkd(STUDENT, TEACHER, TARGETS, temperature, 1.0)
    np.testing.assert_allclose(tckd + (1 - p_target) * nckd, kl, rtol=1e-12)
    _, _, kd = kd_loss_terms(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS), temperature, 0.5)
    assert kd.item() == pytest.approx(temperature**2 * np.mean(tckd + (1 - p_target) * nckd), rel=1e-5)


def test_dkd_stays_finite_when_the_teacher_is_certain():
    teacher = torch.tensor([[80.0, 0.0, 0.0], [0.0, 90.0, -5.0]])
    _, _, kd = kd_loss_terms(torch.randn(2, 3), teacher, torch.tensor([0, 1]), 1.0, 0.9, method="dkd")
    assert math.isfinite(kd.item())


def test_dkd_warmup_rises_linearly_to_one():
    assert [dkd_warmup(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert RunConfig(model="tinycnn", epochs=240, method="dkd", alpha=0.5).effective_dkd_warmup_epochs == 20
    assert RunConfig(model="tinycnn", epochs=6, method="dkd", alpha=0.5).effective_dkd_warmup_epochs == 1


def test_within_class_donors_keep_every_label_and_never_the_image_itself():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 2, 0])  # class 3 has a single image
    for seed, epoch in [(0, 0), (0, 1), (5, 0)]:
        donors = within_class_donors(labels, seed, epoch)
        assert sorted(donors.tolist()) == list(range(len(labels)))  # a permutation: each image teaches once
        assert torch.equal(labels[donors], labels)
        alone = labels == 3
        assert torch.equal(donors[alone], torch.arange(len(labels))[alone])
        assert (donors[~alone] != torch.arange(len(labels))[~alone]).all()
    assert torch.equal(within_class_donors(labels, 0, 0), within_class_donors(labels, 0, 0))  # a resume replays it
    assert not torch.equal(within_class_donors(labels, 0, 0), within_class_donors(labels, 0, 1))  # redrawn per epoch


@pytest.mark.parametrize("p, temperature", [(0.9, 4.0), (0.35, 1.0), (1.0, 2.0)])
def test_the_uniform_teacher_gives_the_stated_true_class_probability_and_spreads_the_rest(p, temperature):
    targets = torch.tensor([2, 0, 4])
    target = torch.softmax(uniform_teacher_logits(targets, 5, p, temperature).double() / temperature, dim=1)
    torch.testing.assert_close(target.sum(1), torch.ones(3, dtype=torch.float64))
    want = min(p, 1 - 1e-6)
    assert target[torch.arange(3), targets].tolist() == pytest.approx([want] * 3, rel=1e-5)
    others = target[torch.arange(5)[None, :] != targets[:, None]]
    assert others.tolist() == pytest.approx([(1 - want) / 4] * 12, rel=1e-4, abs=1e-9)


def test_true_class_probability_against_a_hand_softmax():
    logits, labels = torch.tensor(TEACHER), torch.tensor(TARGETS)
    want = _softmax(TEACHER / 2.0)[np.arange(len(TARGETS)), TARGETS]
    np.testing.assert_allclose(true_class_probability(logits, labels, 2.0).numpy(), want, rtol=1e-6)


def test_fidelity_on_a_hand_made_example():
    # Four test images of classes 0, 1, 2, 0; the teacher is wrong on the last two (says 1 and 2).
    labels = torch.tensor([0, 1, 2, 0])
    teacher = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    # The student: right on image 0, wrong on image 1 (says 2), copies the teacher's mistake on image 2, and
    # makes its own on image 3 (says 1 where the teacher said 2).
    student = torch.tensor([[3.0, 0, 0], [0, 0, 3.0], [0, 3.0, 0], [0, 3.0, 0]])
    got = fidelity_metrics(student, teacher, labels)
    assert got["test_agreement"] == pytest.approx(2 / 4)
    assert got["test_inherited_errors"] == pytest.approx(1 / 2)  # 1 of the teacher's 2 errors made the same way
    p_t, p_s = _softmax(teacher.numpy()), _softmax(student.numpy())
    assert got["test_kl"] == pytest.approx(np.mean(np.sum(p_t * np.log(p_t / p_s), axis=1)), rel=1e-5)
    right = fidelity_metrics(student, torch.eye(3)[labels] * 5, labels)
    assert math.isnan(right["test_inherited_errors"])  # a teacher with no errors has none to pass on


class RecordingTeacher:
    """A cached teacher whose logits of image i say "class of image i, by index": records what it was asked."""

    def __init__(self, splits, classes):
        n = len(splits.train_labels)
        self.train = torch.randn(1, n, classes)
        self.val_logits = torch.randn(len(splits.val_labels), classes)
        self.test_logits = torch.randn(len(splits.test_labels), classes)
        self.aug_seed = 1
        self.asked: list[torch.Tensor] = []

    def train_logits(self, epoch, idx, views):
        self.asked.append(idx.clone())
        return self.train[epoch, idx]

    def true_class_probability(self, labels, temperature, epochs):
        return true_class_probability(self.train[0], labels, temperature).mean().item()


def test_kd_shuffled_asks_for_same_class_donors_and_kd_uniform_for_nothing():
    splits = synthetic_splits(96, 16, 16)
    base = dict(model="tinycnn", epochs=1, batch_size=32, alpha=0.7, temperature=4.0, aug_seed=1, precision="fp32")
    teacher = RecordingTeacher(splits, splits.num_classes)
    train(RunConfig(**base, method="kd-shuffled", seed=3), splits, CPU, teacher=teacher)
    asked = torch.cat(teacher.asked)
    donors = within_class_donors(splits.train_labels, 3, 0)
    assert sorted(asked.tolist()) == list(range(96)) and torch.equal(splits.train_labels[asked].sort().values,
                                                                      splits.train_labels.sort().values)
    from kdtune.engine.data import epoch_order
    assert torch.equal(asked, donors[epoch_order(96, 3, 0)])  # the batch's images, each through its donor
    teacher.asked.clear()
    uniform = train(RunConfig(**base, method="kd-uniform"), splits, CPU, teacher=teacher)
    assert teacher.asked == [] and uniform.final["train_kd"] > 0
    plain = train(RunConfig(**base), splits, CPU, teacher=teacher)
    assert plain.final["train_loss"] != uniform.final["train_loss"]


# ----------------------------------------------------------------------------- the share a control reproduces


def test_fieller_bounds_are_where_the_paired_t_test_of_control_minus_r_kd_sits_at_the_5_percent_level():
    from scipy import stats

    from kdtune.report.stats import share_interval

    rng = np.random.default_rng(3)
    kd = 1.2 + 0.3 * rng.standard_normal(6)
    control = 0.5 * kd + 0.2 * rng.standard_normal(6)
    low, high, bounded = share_interval(control, kd)
    assert bounded and low < control.mean() / kd.mean() < high
    for r in (low, high):  # the interval inverts the test: at its ends p is exactly 0.05
        assert stats.ttest_1samp(control - r * kd, 0).pvalue == pytest.approx(0.05, rel=1e-6)
    for r in (low - 0.05, high + 0.05):
        assert stats.ttest_1samp(control - r * kd, 0).pvalue < 0.05
    # A KD gain not resolved from zero bounds no share.
    unresolved = np.array([0.5, -0.4, 0.3, -0.2])
    assert share_interval(control[:4], unresolved)[2] is False


def test_the_report_words_a_share_by_its_interval():
    from kdtune.report.stats import ControlShare, PairedGain
    from kdtune.report.summary import share_text

    difference = PairedGain(5, 0.004, 0.003, 0.004)
    def share(low, high):
        return share_text(ControlShare("kd-uniform", 5, (low + high) / 2, low, high, True, difference))

    assert "inconclusive: the interval contains both none and all" in share(-0.2, 1.3)
    assert "some of KD's gain, but not all of it" in share(0.2, 0.8)
    assert "consistent with all of KD's gain" in share(0.4, 1.2)
    assert "that it reproduces none is not excluded" in share(-0.1, 0.7)
    assert "neither resolved ahead" in share(0.2, 0.8)  # KD - control: +0.4 ± 0.4 points contains zero
    unbounded = share_text(ControlShare("kd-shuffled", 5, 0.5, math.nan, math.nan, False, difference))
    assert "no share can be stated" in unbounded


# ----------------------------------------------------------------------------- a controls grid, end to end


@pytest.fixture(scope="module")
def controls_sweep(ray_session, mini_data_dir, tmp_path_factory):
    """`kdtune tune --grid` over kd, the two controls and dkd at one T (real images, 3 seeds, 2 epochs)."""
    from kdtune.cli import tune

    base = tmp_path_factory.mktemp("controls")
    (base / "spaces").mkdir()
    space = "grid:\n  method: [kd, kd-shuffled, kd-uniform, dkd]\n  temperature: [4]\n  alpha: 0.9\n"
    (base / "spaces" / "controls.yaml").write_text(space)
    code = tune.main(["--grid", str(base / "spaces" / "controls.yaml"), "--preset", "quick", "--teacher", "tinycnn",
                      "--seeds", "3", "--epochs", "2", "--teacher-epochs", "1", "--train-subset", "100",
                      "--val-size", "20", "--precision", "fp32", "--data-dir", str(mini_data_dir),
                      "--name", "controls", "--results-dir", str(base / "results"),
                      "--teacher-store", str(base / "teachers")])
    assert code == 0
    return base


@pytest.mark.slow
def test_a_controls_grid_runs_end_to_end_through_the_report(controls_sweep):
    import json

    import pandas as pd
    from test_methods import _tune_members

    from kdtune.report.experiment import load_experiment
    from kdtune.report.stats import config_table, control_shares
    from kdtune.report.summary import write_report

    root = controls_sweep / "results" / "controls"
    report = write_report(root)
    table = pd.read_csv(root / "report" / "summary.csv")
    sweep = table[table["phase"] == "sweep"]
    assert list(sweep["method"]) == ["kd", "dkd", "kd-shuffled", "kd-uniform"]
    assert (sweep["seeds_finished"] == 3).all()
    # Every student, the no-KD one too, is measured against the teacher on the test set.
    members = _tune_members(root)
    baseline = table[table["phase"] == "baseline"].iloc[0]
    want = np.mean([m["test_agreement"] for m in members if m["phase"] == "baseline"])
    assert baseline["test_agreement_mean"] == pytest.approx(want, abs=1e-12)
    assert table[["test_kl_mean", "inherited_errors_mean"]].notna().all().all()
    # The controls are compared, never chosen; the share of KD's gain by hand from Tune's own results.
    markdown = report["markdown"]
    assert "Controls at the best KD configuration's T = 4, α = 0.9" in markdown
    assert "kd-shuffled (" in markdown and "kd-uniform (" in markdown
    test_acc = {(m["method"], m["seed"]): m["test_acc"] for m in members if m["phase"] == "sweep"}
    no_kd = {m["seed"]: m["test_acc"] for m in members if m["phase"] == "baseline"}
    kd_gain = np.mean([test_acc["kd", s] - no_kd[s] for s in range(3)])
    trials = load_experiment(root).trials
    configs = config_table(trials, {"baseline": 3, "sweep": 3}, None)
    kd_row = configs[(configs["phase"] == "sweep") & (configs["method"] == "kd")].iloc[0].to_dict()
    for share in control_shares(configs, trials, kd_row):
        gain = np.mean([test_acc[share.method, s] - no_kd[s] for s in range(3)])
        assert share.pairs == 3 and share.share == pytest.approx(gain / kd_gain, rel=1e-9)
    assert {p.name for p in report["figures"]} >= {"fidelity.png"}
    assert [p.name for p in report["teacher_card"]] == ["teacher_card.md", "teacher_card.png"]
    # The teacher card's entropy at T = 4, straight from the cached logits of every epoch's views.
    card = json.loads((root / "teacher_card.json").read_text())
    row = next(r for r in card["profile"] if r["temperature"] == 4.0)
    assert row["swept"] and not next(r for r in card["profile"] if r["temperature"] == 20.0)["swept"]
    cache = [torch.load(f, weights_only=True) for f in sorted(controls_sweep.glob("teachers/*/*-logits/*/epoch-*.pt"))]
    assert len(cache) == 2
    from kdtune.engine.data import load_dataset, make_splits

    record = json.loads((root / "experiment.json").read_text())["settings"]
    splits = make_splits(load_dataset(record["data_dir"]), record["val_size"], record["train_subset"])
    entropies = []
    for logits in cache:
        p = torch.softmax(logits.double() / 4.0, dim=1)
        entropies.append((-(p * p.log()).sum(1) / math.log(p.shape[1])).mean().item())
    assert row["entropy_fraction"] == pytest.approx(np.mean(entropies), rel=1e-5)
    true = np.mean([torch.softmax(logits.double() / 4.0, 1)[torch.arange(len(splits.train_labels)),
                                                               splits.train_labels].mean().item() for logits in cache])
    assert row["true_class_probability"] == pytest.approx(true, rel=1e-5)
    assert "| 4 ◆ |" in (root / "report" / "teacher_card.md").read_text()


def test_kd_against_a_control_is_worded_by_its_interval():
    from kdtune.report.stats import PairedGain
    from kdtune.report.summary import difference_text

    assert difference_text(PairedGain(5, 0.0589, 0.0185, 0.0230)).endswith("(95% CI +3.59 to +8.19: KD ahead)")
    assert "the control ahead" in difference_text(PairedGain(5, -0.02, 0.005, 0.01))
    assert "neither resolved ahead" in difference_text(PairedGain(5, 0.01, 0.02, 0.03))
    assert "no interval" in difference_text(PairedGain(1, 0.01))
