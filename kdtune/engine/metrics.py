"""Classification metrics over whole logit tensors: accuracy, NLL, calibration, agreement."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ECE_BINS = 15


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return F.cross_entropy(logits.float(), labels).item()


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): |accuracy - confidence| per equal-width confidence bin, weighted by bin size."""
    confidence, predicted = F.softmax(logits.float(), dim=1).max(1)
    correct = (predicted == labels).float()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence is never below 1/classes > 0.
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1
    conf_sum = torch.zeros(bins, device=logits.device).index_add_(0, which, confidence)
    correct_sum = torch.zeros(bins, device=logits.device).index_add_(0, which, correct)
    # sum over bins of (n_b / N) * |mean confidence_b - accuracy_b|
    return ((conf_sum - correct_sum).abs().sum() / len(labels)).item()


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Top-1 agreement: the share of images where student and teacher predict the same class."""
    return (student_logits.argmax(1) == teacher_logits.to(student_logits.device).argmax(1)).float().mean().item()


def fidelity_metrics(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                     prefix: str = "test") -> dict[str, float]:
    """How closely a student follows its teacher on one image set: top-1 agreement, mean KL(teacher || student)
    at T = 1, and inherited errors: of the images the teacher gets wrong, the share on which the student makes
    the same wrong prediction (NaN when the teacher gets none wrong)."""
    student, teacher = student_logits.float(), teacher_logits.to(student_logits.device).float()
    labels = labels.to(student.device)
    kl = F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), reduction="batchmean", log_target=True)
    said, followed = teacher.argmax(1), student.argmax(1)
    wrong = said != labels
    inherited = (followed[wrong] == said[wrong]).float().mean().item() if wrong.any() else float("nan")
    return {f"{prefix}_agreement": (followed == said).float().mean().item(), f"{prefix}_kl": kl.item(),
            f"{prefix}_inherited_errors": inherited}


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_acc": accuracy(logits, labels),
        f"{prefix}_nll": nll(logits, labels),
        f"{prefix}_ece": expected_calibration_error(logits, labels),
    }


def soft_target_profile(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    """What a teacher's targets softened at `temperature` look like, averaged over images: their entropy as a
    fraction of log(classes) (0: one-hot, 1: uniform), the probability mass off the true class, and the
    true-class probability."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(1)
    true = p.gather(1, labels.to(p.device).view(-1, 1)).squeeze(1)
    return {"entropy_fraction": (entropy / math.log(logits.shape[1])).mean().item(),
            "non_target_mass": (1 - true).mean().item(), "true_class_probability": true.mean().item()}
