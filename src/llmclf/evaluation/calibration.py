"""From logits to probabilities, and how far those probabilities can be trusted.

Definitions (docs/evaluation.md explains them at length):

- **Single-label.** The *confidence* of an example is its largest class probability, and
  it is *correct* when that class (the prediction) is the true one.
- **Multi-label.** Every (example, label) pair is one binary forecast: its confidence is the
  label's sigmoid probability and its outcome is whether the label is present. Calibration
  figures pool all ``n * k`` pairs.
- **ECE** (expected calibration error, Guo et al. 2017): confidences are put in 15
  equal-width bins ``[0, 1/15], (1/15, 2/15], ..., (14/15, 1]`` (right-closed, as
  scikit-learn's ``calibration_curve``); ECE = sum over bins of
  ``(bin size / total) * |accuracy in bin - mean confidence in bin|``.
- **Brier score**: mean over examples of ``sum_k (p_k - y_k)^2`` (single-label, 0 to 2;
  scikit-learn's multiclass ``brier_score_loss``), or the mean of ``(p - y)^2`` over all
  (example, label) pairs (multi-label, 0 to 1).
- **NLL**: mean negative log-likelihood of the true class (single-label) or the mean
  binary cross-entropy over (example, label) pairs (multi-label).
- **Temperature scaling** divides every logit by one scalar ``T`` fitted to minimise the NLL
  on held-out data. It never changes a single-label prediction (the arg-max is unchanged),
  and multi-label thresholds are moved with it (``rescale_thresholds``) so decisions stay put.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit

ECE_BINS = 15
# Probabilities are clipped this far from 0 and 1 before taking logs (NLL, rescaling).
EPSILON = 1e-12
TEMPERATURE_RANGE = (0.05, 20.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax. [n, k] -> [n, k]."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def to_proba(logits: np.ndarray, multi_label: bool, temperature: float = 1.0) -> np.ndarray:
    """Softmax (single-label) or per-class sigmoid (multi-label) of ``logits / temperature``."""
    scaled = logits / temperature
    return sigmoid(scaled) if multi_label else softmax(scaled)


# ---------------------------------------------------------------------------------------
# Calibration figures
# ---------------------------------------------------------------------------------------


def forecasts(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome) pairs that calibration is measured on.

    Single-label (``y_true`` [n] class indices): confidence = max probability, outcome =
    1 when the arg-max class is the true one. Multi-label (``y_true`` [n, k] 0/1): every
    label probability against the label's presence, flattened to [n * k].

    Example:
        >>> forecasts(np.array([0, 1]), np.array([[0.8, 0.2], [0.7, 0.3]]))
        (array([0.8, 0.7]), array([1., 0.]))
    """
    proba = np.asarray(proba, dtype=np.float64)
    if y_true.ndim == 2:
        return proba.ravel(), np.asarray(y_true, dtype=np.float64).ravel()
    correct = proba.argmax(axis=1) == y_true
    return proba.max(axis=1), correct.astype(np.float64)


@dataclass
class ReliabilityBins:
    """Per-bin figures of a reliability diagram; empty bins have count 0 and NaN means."""

    edges: np.ndarray  # [bins + 1]
    count: np.ndarray  # [bins]
    confidence: np.ndarray  # [bins] mean confidence
    accuracy: np.ndarray  # [bins] mean outcome

    def as_dict(self) -> dict:
        def clean(values):
            return [None if np.isnan(v) else round(float(v), 6) for v in values]

        return {
            "edges": [round(float(e), 6) for e in self.edges],
            "count": [int(c) for c in self.count],
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
        }


def reliability_bins(
    confidence: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS
) -> ReliabilityBins:
    """Equal-width, right-closed bins of ``confidence`` with the mean outcome in each.

    Example:
        >>> r = reliability_bins(np.array([0.1, 0.9, 0.95]), np.array([0.0, 1.0, 0.0]), bins=2)
        >>> r.count.tolist(), r.accuracy.tolist()
        ([1, 2], [0.0, 0.5])
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        mean_outcome = np.bincount(which, weights=outcome, minlength=bins) / count
    return ReliabilityBins(edges, count, mean_conf, mean_outcome)


def expected_calibration_error(
    y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE with ``bins`` equal-width bins (see the module docstring for both label kinds).

    Example:
        >>> y = np.array([0, 1, 1, 0])
        >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
        >>> round(expected_calibration_error(y, p), 4)  # one per bin: (.1 + .2 + .6 + .3) / 4
        0.3
    """
    confidence, outcome = forecasts(y_true, proba)
    r = reliability_bins(confidence, outcome, bins)
    filled = r.count > 0
    gaps = np.abs(r.accuracy[filled] - r.confidence[filled])
    return float(np.sum(r.count[filled] / r.count.sum() * gaps))


def brier_score(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Single-label: mean of ``sum_k (p_k - onehot_k)^2``. Multi-label: mean ``(p - y)^2``.

    Example:
        >>> brier_score(np.array([0, 1]), np.array([[1.0, 0.0], [0.5, 0.5]]))
        0.25
    """
    proba = np.asarray(proba, dtype=np.float64)
    if y_true.ndim == 2:
        return float(np.mean((proba - y_true) ** 2))
    onehot = np.eye(proba.shape[1])[y_true]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def negative_log_likelihood(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean NLL of the truth (single-label) or mean binary cross-entropy (multi-label)."""
    proba = np.clip(np.asarray(proba, dtype=np.float64), EPSILON, 1 - EPSILON)
    if y_true.ndim == 2:
        return float(-np.mean(y_true * np.log(proba) + (1 - y_true) * np.log(1 - proba)))
    return float(-np.mean(np.log(proba[np.arange(len(y_true)), y_true])))


def calibration_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``ece``, ``brier`` and ``nll`` of probabilities against the truth (either label kind)."""
    return {
        "ece": expected_calibration_error(y_true, proba),
        "brier": brier_score(y_true, proba),
        "nll": negative_log_likelihood(y_true, proba),
    }


def calibration_figures(
    y_true: np.ndarray, proba: np.ndarray, multi_label: bool, temperature: float = 1.0
) -> dict[str, float]:
    """``ece`` / ``brier`` / ``nll`` of ``proba`` (made at ``temperature``) and ``temperature``;
    when it is not 1, the same figures of the uncalibrated probabilities as ``*_uncalibrated``.

    Example:
        >>> sorted(calibration_figures(np.array([0]), np.array([[0.7, 0.3]]), False, 2.0))
        ['brier', 'brier_uncalibrated', 'ece', 'ece_uncalibrated', 'nll', 'nll_uncalibrated', 'temperature']
    """
    out = {**calibration_metrics(y_true, proba), "temperature": float(temperature)}
    if temperature != 1.0:
        raw = rescale_proba(proba, multi_label, temperature, 1.0)
        out.update({f"{k}_uncalibrated": v for k, v in calibration_metrics(y_true, raw).items()})
    return out


# ---------------------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------------------


def _nll_at(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    if y_true.ndim == 2:  # binary cross-entropy in a numerically stable form
        return float(np.mean(np.logaddexp(0.0, scaled) - y_true * scaled))
    return float(-np.mean(log_softmax(scaled, axis=1)[np.arange(len(y_true)), y_true]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature T that minimises the NLL of ``to_proba(logits / T)`` on ``y_true``.

    ``y_true`` is [n] class indices (softmax) or [n, k] 0/1 indicators (sigmoid). T is
    searched on a log scale within [0.05, 20]; T > 1 softens over-confident models.

    Example:
        >>> z = np.array([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
        >>> fit_temperature(z, np.array([0, 0, 1, 1])) > 1  # one confident mistake in four
        True
    """
    logits = np.asarray(logits, dtype=np.float64)
    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    result = minimize_scalar(
        lambda log_t: _nll_at(logits, y_true, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def rescale_proba(
    proba: np.ndarray, multi_label: bool, from_temperature: float, to_temperature: float
) -> np.ndarray:
    """Probabilities made at one temperature, recomputed at another, without the model.

    Softmax: ``log p`` equals ``logits / T`` up to a per-row constant, which softmax ignores.
    Sigmoid: ``logit(p) = logits / T`` exactly. A probability stored as exactly 0 (or 1)
    has lost its logit; it is read as the smallest (largest) float64 there is.

    Example:
        >>> p = to_proba(np.array([[2.0, 0.0]]), multi_label=False, temperature=1.0)
        >>> np.allclose(rescale_proba(p, False, 1.0, 2.0), to_proba(np.array([[2.0, 0.0]]), False, 2.0))
        True
    """
    if from_temperature == to_temperature:
        return np.asarray(proba, dtype=np.float64)
    info = np.finfo(np.float64)
    clipped = np.clip(np.asarray(proba, dtype=np.float64), info.tiny, 1 - info.eps)
    factor = from_temperature / to_temperature
    if multi_label:
        return expit(logit(clipped) * factor)
    return softmax(np.log(clipped) * factor)


def rescale_thresholds(
    thresholds: list[float], from_temperature: float, to_temperature: float
) -> list[float]:
    """Multi-label thresholds that keep every decision when the temperature changes.

    ``p >= t`` at temperature T1 is ``z >= T1 * logit(t)``, which at T2 reads
    ``p' >= sigmoid(T1 * logit(t) / T2)``.

    Example:
        >>> rescale_thresholds([0.5, 0.8], 1.0, 2.0)[0]
        0.5
    """
    t = np.clip(np.asarray(thresholds, dtype=np.float64), EPSILON, 1 - EPSILON)
    moved = expit(logit(t) * from_temperature / to_temperature)
    return [float(v) for v in moved]
