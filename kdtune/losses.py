"""The knowledge-distillation loss (Hinton, Vinyals & Dean 2015, "Distilling the
Knowledge in a Neural Network", arXiv:1503.02531).

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The KL term is averaged over the batch; the T^2 factor keeps its gradient
magnitude comparable across temperatures.  alpha weights the KD term, as in the
seed project; alpha = 0 is plain supervised training and needs no teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (total, ce, kd) as scalar tensors; kd is the T^2-scaled KL before alpha weighting."""
    ce = F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce, ce, torch.zeros_like(ce)
    assert teacher_logits is not None, "alpha > 0 needs teacher logits"
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    kd = kl * temperature**2
    return alpha * kd + (1 - alpha) * ce, ce, kd


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The scalar KD loss of the module docstring."""
    return kd_loss_terms(student_logits, teacher_logits, targets, temperature, alpha)[0]
