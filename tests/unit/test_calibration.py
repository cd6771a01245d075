"""Calibration figures against scikit-learn and hand-computed values; temperature scaling."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from llmclf.evaluation.calibration import (
    brier_score,
    calibration_figures,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    rescale_proba,
    rescale_thresholds,
    to_proba,
)


def single_label(n=400, k=4, seed=0, temperature=1.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, k))
    proba = to_proba(logits, multi_label=False, temperature=temperature)
    truth = np.array([rng.choice(k, p=row) for row in to_proba(logits, False)])
    return truth, proba, logits


def ece_from_sklearn(outcome, confidence, bins=15):
    """ECE rebuilt from calibration_curve's per-bin means and numpy's bin counts."""
    prob_true, prob_pred = calibration_curve(outcome, confidence, n_bins=bins, strategy="uniform")
    edges = np.linspace(0, 1, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / len(confidence) * np.abs(prob_true - prob_pred)))


def test_single_label_ece_matches_sklearn_calibration_curve():
    truth, proba, _ = single_label(temperature=0.5)  # sharpened: over-confident
    confidence = proba.max(axis=1)
    outcome = (proba.argmax(axis=1) == truth).astype(int)
    ece = expected_calibration_error(truth, proba)
    assert ece == pytest.approx(ece_from_sklearn(outcome, confidence))
    assert ece > 0.05


def test_multi_label_ece_pools_every_label_probability():
    rng = np.random.default_rng(1)
    proba = rng.random((300, 5))
    truth = (rng.random((300, 5)) < proba**2).astype(int)  # probabilities too high
    ece = expected_calibration_error(truth, proba)
    assert ece == pytest.approx(ece_from_sklearn(truth.ravel(), proba.ravel()))
    assert brier_score(truth, proba) == pytest.approx(
        brier_score_loss(truth.ravel(), proba.ravel())
    )


def test_ece_hand_computed_and_bin_edges_are_right_closed():
    # two bins: [0, 0.5] and (0.5, 1]; 0.5 belongs to the first
    bins = reliability_bins(np.array([0.5, 0.5, 0.75, 1.0]), np.array([1, 0, 1, 1.0]), bins=2)
    assert bins.count.tolist() == [2, 2]
    assert bins.confidence.tolist() == [0.5, 0.875] and bins.accuracy.tolist() == [0.5, 1.0]
    # single-label: confidences 0.9 (right) and 0.6 (wrong) in bins of their own
    truth = np.array([0, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert expected_calibration_error(truth, proba) == pytest.approx((0.1 + 0.6) / 2)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(truth, perfect) == 0.0


def test_brier_and_nll_match_sklearn_for_single_label():
    truth, proba, _ = single_label(k=3, seed=2)
    assert brier_score(truth, proba) == pytest.approx(
        brier_score_loss(truth, proba, labels=[0, 1, 2])
    )
    assert negative_log_likelihood(truth, proba) == pytest.approx(
        log_loss(truth, proba, labels=[0, 1, 2])
    )
    assert brier_score(np.array([1]), np.array([[1.0, 0.0]])) == 2.0  # the worst case


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (20_000, 5))
    # labels drawn from softmax(logits / T): the best temperature for these logits is T
    proba = to_proba(logits, multi_label=False, temperature=true_temperature)
    truth = (proba.cumsum(axis=1) > rng.random((len(proba), 1))).argmax(axis=1)
    assert fit_temperature(logits, truth) == pytest.approx(true_temperature, rel=0.05)


def test_temperature_scaling_recovers_a_known_multi_label_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (8_000, 4))
    truth = (rng.random(logits.shape) < to_proba(logits, True, 3.0)).astype(int)
    assert fit_temperature(logits, truth) == pytest.approx(3.0, rel=0.05)


def test_temperature_scaling_lowers_nll_and_ece_of_an_over_confident_model():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (5_000, 3))
    proba_true = to_proba(logits, False)
    truth = (proba_true.cumsum(axis=1) > rng.random((len(logits), 1))).argmax(axis=1)
    sharp = logits * 3  # the model is three times too sure of itself
    temperature = fit_temperature(sharp, truth)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before, after = to_proba(sharp, False), to_proba(sharp, False, temperature)
    assert negative_log_likelihood(truth, after) < negative_log_likelihood(truth, before)
    assert expected_calibration_error(truth, after) < expected_calibration_error(truth, before) / 3
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()  # decisions unchanged


@pytest.mark.parametrize("multi_label", [False, True])
def test_rescaling_probabilities_equals_recomputing_from_logits(multi_label):
    logits = np.random.default_rng(3).normal(0, 4, (50, 4))
    at_one = to_proba(logits, multi_label, 1.0)
    assert np.allclose(
        rescale_proba(at_one, multi_label, 1.0, 2.7), to_proba(logits, multi_label, 2.7)
    )
    at_half = to_proba(logits, multi_label, 0.5)
    assert np.allclose(rescale_proba(at_half, multi_label, 0.5, 1.0), at_one, atol=1e-9)


def test_rescaled_thresholds_keep_every_multi_label_decision():
    logits = np.random.default_rng(4).normal(0, 3, (400, 3))
    thresholds = [0.3, 0.5, 0.85]
    before = to_proba(logits, True, 1.0) >= np.array(thresholds)
    moved = rescale_thresholds(thresholds, 1.0, 2.0)
    after = to_proba(logits, True, 2.0) >= np.array(moved)
    assert (before == after).all()
    assert moved[1] == 0.5 and moved[0] > 0.3 and moved[2] < 0.85


def test_calibration_figures_keep_the_uncalibrated_numbers():
    truth, _, logits = single_label(seed=5)
    calibrated = to_proba(logits, False, 2.0)
    figures = calibration_figures(truth, calibrated, False, temperature=2.0)
    raw = to_proba(logits, False, 1.0)
    assert figures["temperature"] == 2.0
    assert figures["ece"] == pytest.approx(expected_calibration_error(truth, calibrated))
    assert figures["ece_uncalibrated"] == pytest.approx(expected_calibration_error(truth, raw))
    assert figures["brier_uncalibrated"] == pytest.approx(brier_score(truth, raw))
    assert "ece_uncalibrated" not in calibration_figures(truth, raw, False, 1.0)
