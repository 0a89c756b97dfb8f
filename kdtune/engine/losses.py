"""The distillation losses: how the teacher's temperature-softened logits teach the student.

Every method is the knowledge-distillation loss of Hinton, Vinyals & Dean 2015 ("Distilling the
Knowledge in a Neural Network", arXiv:1503.02531),

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

with the KL term averaged over the batch and the T^2 factor keeping its gradient comparable across
temperatures; alpha = 0 is plain supervised training and needs no teacher.  They differ in the T and
the logits the softmax sees (`method`):

- `kd`: raw logits, a fixed T.
- `ls`: logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in Knowledge
  Distillation"): each sample's teacher and student logits are z-scored (minus their mean, over their
  standard deviation) before the division by the base temperature T, so the student matches the
  shape of the teacher's logits, not their scale.  As in the authors' code, the standard deviation is
  the unbiased one and 1e-7 guards the division.
- `ctkd`: curriculum temperature (Li et al., AAAI 2023, "Curriculum Temperature for Knowledge
  Distillation"): T is learned (`LearnedTemperature`), adversarially: its gradient is reversed and
  scaled by lambda (`reverse_gradient`), so T moves to make the KD term harder, with lambda rising from
  0 to 1 on a cosine schedule (`ctkd_lambda`).  The loss itself is `kd`'s, at that T.
- `dkd`: decoupled knowledge distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation"):
  the KL term split into its target-class part (TCKD: the binary distribution target / not target) and its
  non-target part (NCKD: the distribution among the other classes), weighted TCKD + beta * NCKD; KL itself is
  TCKD + (1 - p_t) * NCKD, p_t the teacher's softened true-class probability.  The KD weight warms up
  linearly (`dkd_warmup`), as in the authors' code.

Two controls, which keep kd's loss and change what the teacher says:

- `kd-shuffled`: each image is taught by the cached logits of another training image of its class, seen
  in the same epoch's view (`kdtune.engine.data.within_class_donors`): the teacher's class-level
  similarity structure stays, everything it knows of the image itself goes.
- `kd-uniform`: a teacher that knows only the labels: at T the true class gets the teacher's mean
  true-class probability at T, the other classes share the rest equally (`uniform_teacher_logits`):
  label smoothing matched to the teacher's confidence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("kd", "ls", "ctkd", "dkd", "kd-shuffled", "kd-uniform")
CONTROLS = ("kd-shuffled", "kd-uniform")  # methods that replace what the teacher says, not how it is learned
LS_EPS = 1e-7  # the authors' guard against a constant logit vector
DKD_BETA = 8.0  # the NCKD weight of the authors' CIFAR-100 settings
DKD_WARMUP = 20 / 240  # the fraction of training over which the authors warm the KD weight up (20 of 240 epochs)


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample z-scores of (N, classes) logits: the `ls` method's input to the softmax."""
    mean = logits.mean(dim=1, keepdim=True)
    return (logits - mean) / (LS_EPS + logits.std(dim=1, keepdim=True))


def kd_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float | torch.Tensor,
    alpha: float,
    label_smoothing: float = 0.0,
    method: str = "kd",
    dkd_beta: float = DKD_BETA,
    kd_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (total, ce, kd) as scalar tensors; kd is the T^2-scaled KL (or DKD's TCKD + beta * NCKD) before
    alpha weighting: total = alpha * kd_scale * kd + (1 - alpha) * ce, kd_scale being DKD's warm-up factor.

    `temperature` is a number, or for `ctkd` the learned temperature as a 0-d tensor (which carries the
    reversed gradient back to its parameter).  For the controls, `teacher_logits` are already the control's
    (another image's, or `uniform_teacher_logits`)."""
    ce = F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce, ce, torch.zeros_like(ce)
    assert teacher_logits is not None, "alpha > 0 needs teacher logits"
    student, teacher = student_logits.float(), teacher_logits.float()
    if method == "ls":
        student, teacher = standardize(student), standardize(teacher)
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    if method == "dkd":
        tckd, nckd = dkd_parts(log_p_student, log_p_teacher, targets)
        kd = (tckd + dkd_beta * nckd).mean() * temperature**2
    else:
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        kd = kl * temperature**2
    return alpha * kd_scale * kd + (1 - alpha) * ce, ce, kd


def dkd_parts(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor,
              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD) of softened log-probabilities (N, classes): TCKD the KL between the teacher's and
    the student's binary (target, rest) distributions, NCKD the KL between their distributions over the
    non-target classes alone (each renormalised).  Computed from log-probabilities, so that a teacher sure
    of the target class (rest mass ~ 0) stays finite; masked rather than indexed, so that nothing waits for
    the device."""
    target = F.one_hot(targets, log_p_student.shape[1]).bool()

    def parts(log_p):
        log_target = log_p.gather(1, targets.view(-1, 1)).squeeze(1)
        log_rest = torch.logsumexp(log_p.masked_fill(target, -math.inf), dim=1)
        log_q = (log_p - log_rest[:, None]).masked_fill(target, 0.0)  # over the non-target classes
        return torch.stack([log_target, log_rest], dim=1), log_q

    log_b_s, log_q_s = parts(log_p_student)
    log_b_t, log_q_t = parts(log_p_teacher)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1)
    nckd = (log_q_t.exp().masked_fill(target, 0.0) * (log_q_t - log_q_s)).sum(1)
    return tckd, nckd


def dkd_warmup(step: int, warmup_steps: int) -> float:
    """DKD's KD weight factor at optimiser step `step`: rising linearly to 1 over `warmup_steps` (the authors
    ramp per epoch, min(epoch / 20, 1) from epoch 1; per step here, so short runs ramp smoothly)."""
    return min(1.0, (step + 1) / warmup_steps)


# ----------------------------------------------------------------------------- the kd-uniform control


def true_class_probability(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample softmax(logits / T)[label], in float32: how sure of the right class a softened target is."""
    return F.softmax(logits.float() / temperature, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


def uniform_teacher_logits(targets: torch.Tensor, classes: int, true_probability: float,
                           temperature: float) -> torch.Tensor:
    """Logits (N, classes) whose softmax at `temperature` gives the target class `true_probability` and every
    other class an equal share of the rest: `kd-uniform`'s teacher (T * log of that distribution)."""
    return uniform_teacher_table(classes, true_probability, temperature, targets.device)[targets]


def uniform_teacher_table(classes: int, true_probability: float, temperature: float,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """(classes, classes): row y is `uniform_teacher_logits` of a class-y image; made once per run, indexed by
    the batch's labels in every step."""
    p = min(max(true_probability, 1e-6), 1 - 1e-6)  # a log of 0 would make the KL infinite
    rest = (1 - p) / (classes - 1)
    log_q = torch.full((classes, classes), math.log(rest), device=device)
    log_q.fill_diagonal_(math.log(p))
    return temperature * log_q


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    method: str = "kd",
) -> torch.Tensor:
    """The scalar loss of the module docstring."""
    return kd_loss_terms(student_logits, teacher_logits, targets, temperature, alpha, method=method)[0]


# ----------------------------------------------------------------------------- curriculum temperature (ctkd)


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by -strength backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float) -> torch.Tensor:
    return _ReverseGradient.apply(x, strength)


class LearnedTemperature(nn.Module):
    """CTKD's global temperature T = low + (high - low) * sigmoid(theta), starting at `initial`.

    The sigmoid keeps T inside (low, high) whatever the optimiser does; `forward(strength)` returns T
    with its gradient reversed and scaled by `strength` (lambda)."""

    def __init__(self, initial: float, low: float, high: float):
        super().__init__()
        if not low < initial < high:
            raise ValueError(f"initial temperature {initial} must lie strictly inside ({low}, {high})")
        self.low, self.high = float(low), float(high)
        fraction = (initial - low) / (high - low)
        self.theta = nn.Parameter(torch.tensor(math.log(fraction / (1 - fraction)), dtype=torch.float32))

    def value(self) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(self.theta)

    def forward(self, strength: float) -> torch.Tensor:
        return reverse_gradient(self.value(), strength)


def ctkd_lambda(step: int, ramp_steps: int) -> float:
    """The reversal strength at optimiser step `step`: 0 at the start, rising to 1 after `ramp_steps` on a
    cosine (the paper ramps per epoch over its first 10 of 240; per step here, so short runs ramp smoothly)."""
    if step >= ramp_steps:
        return 1.0
    return 0.5 * (1 - math.cos(math.pi * step / ramp_steps))


def gradient_ratio(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                   temperature: float, method: str = "kd") -> float:
    """|d KD / d logits| over |d CE / d logits| (the norms of the two terms' gradients w.r.t. the student's logits,
    alpha aside): how strongly a method's KD term pulls at the same alpha.  At alpha, the KD term's share of
    the pull is alpha * r against (1 - alpha) for CE, so two methods are weighted alike when their
    alpha / (1 - alpha) * r are equal (see `matched_alpha`)."""
    logits = student_logits.detach().float().requires_grad_(True)
    _, ce, kd = kd_loss_terms(logits, teacher_logits, targets, temperature, alpha=0.5, method=method)
    grad_ce, = torch.autograd.grad(ce, logits, retain_graph=True)
    grad_kd, = torch.autograd.grad(kd, logits)
    return float(grad_kd.norm() / grad_ce.norm())


def matched_alpha(alpha: float, ratio: float, other_ratio: float) -> float:
    """The alpha at which a method whose gradient ratio is `other_ratio` pulls toward the teacher as strongly,
    relative to CE, as one with `ratio` does at `alpha`."""
    odds = alpha / (1 - alpha) * ratio / other_ratio
    return odds / (1 + odds)
