"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from kdtune.engine.metrics import accuracy, agreement, classification_metrics, expected_calibration_error, nll


def _logits_from_probs(rows: list[list[float]]) -> torch.Tensor:
    """log-probabilities are logits whose softmax is exactly those probabilities."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 4.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 2, 0])) == pytest.approx(0.75)
    assert accuracy(logits, torch.tensor([1, 0, 0, 2])) == 0.0


def test_nll():
    probs = [[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]
    labels = torch.tensor([1, 1])
    assert nll(_logits_from_probs(probs), labels) == pytest.approx(-(math.log(0.25) + math.log(0.8)) / 2, rel=1e-5)


def test_ece_hand_example_with_known_bins():
    # Confidences 0.9, 0.9, 0.7, 0.7 (far from the 15-bin edges 0.8667/0.9333 and 0.6667/0.7333).
    probs = [[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.3, 0.7]]
    labels = torch.tensor([0, 1, 1, 1])  # right, wrong, right, right
    # Bin (0.867, 0.933]: 2 images, confidence sum 1.8, 1 correct -> |1.8 - 1| = 0.8.
    # Bin (0.667, 0.733]: 2 images, confidence sum 1.4, 2 correct -> |1.4 - 2| = 0.6.
    assert expected_calibration_error(_logits_from_probs(probs), labels) == pytest.approx((0.8 + 0.6) / 4, abs=1e-6)
    # One bin pools everything: |3.2 - 3| / 4.
    assert expected_calibration_error(_logits_from_probs(probs), labels, bins=1) == pytest.approx(0.05, abs=1e-6)
    # Two bins (0, 0.5], (0.5, 1]: every confidence lands in the second: same as one bin.
    assert expected_calibration_error(_logits_from_probs(probs), labels, bins=2) == pytest.approx(0.05, abs=1e-6)


def test_ece_separates_bins_that_pool_to_zero():
    # Two 0.6-confident predictions (one right) and two 0.95-confident ones (both right).
    probs = [[0.6, 0.4], [0.6, 0.4], [0.95, 0.05], [0.95, 0.05]]
    labels = torch.tensor([0, 1, 0, 0])
    # 4 bins: (0.5, 0.75] has conf 1.2 and 1 correct -> 0.2; (0.75, 1] has conf 1.9 and 2 correct -> 0.1.
    assert expected_calibration_error(_logits_from_probs(probs), labels, bins=4) == pytest.approx(0.3 / 4, abs=1e-6)
    # Pooled into one bin the errors partly cancel: |3.1 - 3| / 4.
    assert expected_calibration_error(_logits_from_probs(probs), labels, bins=1) == pytest.approx(0.1 / 4, abs=1e-6)


def test_ece_is_zero_when_calibrated():
    # Confidence 0.75 in every case and 3 of 4 right.
    probs = [[0.75, 0.25]] * 4
    labels = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(_logits_from_probs(probs), labels) == pytest.approx(0.0, abs=1e-6)


def test_ece_of_fully_confident_wrong_predictions_is_one():
    logits = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    assert expected_calibration_error(logits, torch.tensor([1, 0])) == pytest.approx(1.0, abs=1e-6)


def test_agreement():
    student = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    teacher = torch.tensor([[5.0, 1.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 9.0], [0.0, 7.0, 0.0]], dtype=torch.float16)
    assert agreement(student, teacher) == pytest.approx(0.75)
    assert agreement(student, student) == 1.0


def test_classification_metrics_keys_and_values():
    probs = [[0.9, 0.1], [0.2, 0.8]]
    labels = torch.tensor([0, 0])
    metrics = classification_metrics(_logits_from_probs(probs), labels, "val")
    assert set(metrics) == {"val_acc", "val_nll", "val_ece"}
    assert metrics["val_acc"] == pytest.approx(0.5)
    assert metrics["val_nll"] == pytest.approx(-(math.log(0.9) + math.log(0.2)) / 2, rel=1e-5)
    assert all(isinstance(v, float) for v in metrics.values())
