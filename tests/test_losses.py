"""kd_loss / kd_loss_terms against sums written out by hand (math module, no torch.nn.functional)."""

from __future__ import annotations

import math

import pytest
import torch

from kdtune.engine.losses import kd_loss, kd_loss_terms

STUDENT = [[1.0, -0.5, 2.0], [0.0, 3.0, -1.0]]
TEACHER = [[2.5, 0.0, 1.0], [-1.0, 1.5, 0.5]]
TARGETS = [2, 0]


def _softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _hand_kd(student, teacher, temperature: float) -> float:
    """T^2 * mean over the batch of sum_j p_t[j] * log(p_t[j] / p_s[j])."""
    per_row = []
    for s_row, t_row in zip(student, teacher):
        p_s = _softmax(s_row, temperature)
        p_t = _softmax(t_row, temperature)
        per_row.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))
    return temperature**2 * sum(per_row) / len(per_row)


def _hand_ce(student, targets, smoothing: float = 0.0) -> float:
    """Mean over the batch of -(1 - eps) log p[y] - eps * mean_j log p[j]."""
    per_row = []
    for row, y in zip(student, targets):
        log_p = [math.log(p) for p in _softmax(row)]
        per_row.append(-(1 - smoothing) * log_p[y] - smoothing * sum(log_p) / len(log_p))
    return sum(per_row) / len(per_row)


def _t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 7.5])
@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.9])
def test_terms_match_hand_computation(temperature, alpha):
    total, ce, kd = kd_loss_terms(_t(STUDENT), _t(TEACHER), _t(TARGETS, torch.int64), temperature, alpha)
    want_kd = _hand_kd(STUDENT, TEACHER, temperature)
    want_ce = _hand_ce(STUDENT, TARGETS)
    assert kd.item() == pytest.approx(want_kd, rel=1e-5)
    assert ce.item() == pytest.approx(want_ce, rel=1e-5)
    assert total.item() == pytest.approx(alpha * want_kd + (1 - alpha) * want_ce, rel=1e-5)
    assert kd_loss(_t(STUDENT), _t(TEACHER), _t(TARGETS, torch.int64), temperature, alpha).item() == pytest.approx(
        total.item(), rel=1e-6
    )


def test_two_class_example_with_closed_form_numbers():
    # Teacher logits (ln 3, 0) at T=1 give p_t = (3/4, 1/4); a uniform student gives p_s = (1/2, 1/2).
    student = _t([[0.0, 0.0]])
    teacher = _t([[math.log(3.0), 0.0]])
    y = _t([0], torch.int64)
    _, ce, kd = kd_loss_terms(student, teacher, y, temperature=1.0, alpha=0.5)
    assert kd.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    assert ce.item() == pytest.approx(math.log(2.0), rel=1e-6)
    # At T=2 the teacher is (sqrt 3, 1) / (sqrt 3 + 1); the T^2 factor multiplies the KL by 4.
    _, _, kd2 = kd_loss_terms(student, teacher, y, temperature=2.0, alpha=0.5)
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = a * math.log(2 * a) + (1 - a) * math.log(2 * (1 - a))
    assert kd2.item() == pytest.approx(4 * kl2, rel=1e-5)


def test_doubling_temperature_scales_kl_by_four():
    """kd(2T) / kd(T) = 4 * KL(2T) / KL(T): the T^2 factor, with both KLs summed by hand."""
    s, t, y = _t(STUDENT), _t(TEACHER), _t(TARGETS, torch.int64)
    for temperature in (1.0, 3.0):
        kd_t = kd_loss_terms(s, t, y, temperature, 1.0)[2].item()
        kd_2t = kd_loss_terms(s, t, y, 2 * temperature, 1.0)[2].item()
        kl_t = _hand_kd(STUDENT, TEACHER, temperature) / temperature**2
        kl_2t = _hand_kd(STUDENT, TEACHER, 2 * temperature) / (2 * temperature) ** 2
        assert kd_2t / kd_t == pytest.approx(4 * kl_2t / kl_t, rel=1e-4)


def test_high_temperature_limit_is_logit_matching():
    """Hinton et al.: for large T, T^2 KL -> sum_j (d_j - mean d)^2 / (2K), d = teacher - student logits.

    Without the T^2 factor the KD term would vanish like 1/T^2; with it, it converges to this constant.
    """
    s, t, y = _t(STUDENT, torch.float64), _t(TEACHER, torch.float64), _t(TARGETS, torch.int64)
    limit = 0.0
    for s_row, t_row in zip(STUDENT, TEACHER):
        d = [a - b for a, b in zip(t_row, s_row)]
        mean = sum(d) / len(d)
        limit += sum((v - mean) ** 2 for v in d) / (2 * len(d))
    limit /= len(STUDENT)
    kd_100 = kd_loss_terms(s, t, y, 100.0, 1.0)[2].item()
    kd_200 = kd_loss_terms(s, t, y, 200.0, 1.0)[2].item()
    assert kd_100 == pytest.approx(limit, rel=2e-2)
    assert kd_200 == pytest.approx(limit, rel=1e-2)


def test_alpha_zero_is_cross_entropy_and_needs_no_teacher():
    total, ce, kd = kd_loss_terms(_t(STUDENT), None, _t(TARGETS, torch.int64), temperature=4.0, alpha=0.0)
    assert total.item() == pytest.approx(_hand_ce(STUDENT, TARGETS), rel=1e-6)
    assert ce.item() == total.item()
    assert kd.item() == 0.0
    assert kd_loss(_t(STUDENT), None, _t(TARGETS, torch.int64), 4.0, 0.0).item() == pytest.approx(total.item())


def test_alpha_one_is_pure_kd():
    total, ce, kd = kd_loss_terms(_t(STUDENT), _t(TEACHER), _t(TARGETS, torch.int64), temperature=3.0, alpha=1.0)
    assert total.item() == pytest.approx(_hand_kd(STUDENT, TEACHER, 3.0), rel=1e-5)
    assert total.item() == pytest.approx(kd.item(), rel=1e-6)
    # Changing the labels changes CE, not the alpha = 1 loss.
    other = kd_loss(_t(STUDENT), _t(TEACHER), _t([1, 2], torch.int64), 3.0, 1.0)
    assert other.item() == pytest.approx(total.item(), rel=1e-6)
    assert ce.item() != pytest.approx(_hand_ce(STUDENT, [1, 2]), rel=1e-3)


def test_kd_is_zero_when_student_equals_teacher():
    _, _, kd = kd_loss_terms(_t(TEACHER), _t(TEACHER), _t(TARGETS, torch.int64), 4.0, 0.5)
    assert abs(kd.item()) < 1e-6


def test_kd_is_a_batch_mean():
    y = _t(TARGETS, torch.int64)
    both = kd_loss_terms(_t(STUDENT), _t(TEACHER), y, 2.0, 1.0)[2].item()
    rows = [kd_loss_terms(_t(STUDENT[i : i + 1]), _t(TEACHER[i : i + 1]), y[i : i + 1], 2.0, 1.0)[2].item()
            for i in (0, 1)]
    assert both == pytest.approx(sum(rows) / 2, rel=1e-6)


def test_label_smoothing_applies_to_cross_entropy():
    _, ce, _ = kd_loss_terms(_t(STUDENT), None, _t(TARGETS, torch.int64), 4.0, 0.0, label_smoothing=0.1)
    assert ce.item() == pytest.approx(_hand_ce(STUDENT, TARGETS, smoothing=0.1), rel=1e-5)


def test_half_precision_logits_are_computed_in_float32():
    total, _, kd = kd_loss_terms(
        _t(STUDENT, torch.bfloat16), _t(TEACHER, torch.float16), _t(TARGETS, torch.int64), 4.0, 0.5
    )
    assert total.dtype == torch.float32 and kd.dtype == torch.float32
    # The inputs are exactly representable in bf16 / fp16, so the result equals the fp32 hand value.
    assert kd.item() == pytest.approx(_hand_kd(STUDENT, TEACHER, 4.0), rel=1e-5)


def test_the_gradient_ratio_and_the_matched_alpha_follow_their_definitions():
    """Against the two terms written out here in float64 (Hinton's KD; LS on z-scored logits), differentiated
    by autograd, and the odds written out."""
    from kdtune.engine.losses import gradient_ratio, matched_alpha

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 5
    targets = torch.randint(0, 10, (16,), generator=g)

    def z_score(x):
        return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-7)

    for method, t in (("kd", 4.0), ("ls", 2.0)):
        x = student.double().requires_grad_(True)
        s, te = (z_score(x), z_score(teacher.double())) if method == "ls" else (x, teacher.double())
        log_ps, log_pt = torch.log_softmax(s / t, dim=1), torch.log_softmax(te / t, dim=1)
        kd = t**2 * (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()
        ce = -torch.log_softmax(x, dim=1)[torch.arange(16), targets].mean()
        grad_kd, = torch.autograd.grad(kd, x, retain_graph=True)
        grad_ce, = torch.autograd.grad(ce, x)
        want = (grad_kd.norm() / grad_ce.norm()).item()
        assert gradient_ratio(student, teacher, targets, t, method) == pytest.approx(want, rel=1e-4)
    # Matching: alpha 0.9 at ratio 0.9 pulls like alpha a at ratio 0.2 when a/(1-a)*0.2 == 9*0.9.
    a = matched_alpha(0.9, 0.9, 0.2)
    assert a / (1 - a) * 0.2 == pytest.approx(0.9 / 0.1 * 0.9)
    assert matched_alpha(0.5, 1.0, 1.0) == pytest.approx(0.5)
