"""Selective prediction: answer only when confident enough, and what that buys.

Definitions (docs/evaluation.md has the long form):

- **Decisions and their confidence.** Single-label: one decision per example, the arg-max
  class, with confidence its probability (a row of zeros, an unreadable generated answer,
  has confidence 0). Multi-label: one binary decision per (example, label) cell, present
  when the label's probability reaches its threshold, with confidence the probability of
  the decided outcome (``p`` when decided present, ``1 - p`` when absent). So
  ``--abstain-below P`` means the same in both: answer only what the model gives at least
  probability ``P``; a multi-label run abstains per label.
- **Coverage** is the share of decisions made (not abstained on); **selective accuracy**
  the share of those that are right; **selective F1** the macro-F1 (single-label) or
  micro-F1 over the decided cells (multi-label) of the decisions made.
- **Risk–coverage curve** (Geifman & El-Yaniv 2017): decisions sorted by confidence, most
  confident first; at coverage ``k / n`` the risk is the error rate of the first ``k``.
  **AURC** is the mean of that risk over ``k = 1..n``: 0 for a model whose errors are all
  less confident than its right answers, the error rate itself for a confidence that says
  nothing. Decisions of equal confidence cannot be told apart by any threshold, so their
  errors are spread evenly over their places (the expected value over orders of the ties).
- **Threshold search.** ``threshold_for_precision``: the lowest confidence threshold whose
  accepted decisions are at least ``target`` right (the most coverage that reaches it), on
  held-out data, judged by the share right (``bound="estimate"``) or by the lower end of
  its 95 % Clopper–Pearson interval (``bound="lower"``); ``threshold_for_coverage``: the
  threshold that keeps ``target`` of them.

Pure functions on arrays; nothing here reads a folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta
from sklearn.metrics import f1_score

# precision targets whose coverage evaluate and compare report for every run
PRECISION_TARGETS = (0.9, 0.95, 0.99)

# how threshold_for_precision judges the kept decisions: their share right, or the lower
# end of its 95 % Clopper–Pearson interval (the conservative choice for small splits)
PRECISION_BOUNDS = ("estimate", "lower")


def decisions(
    truth: np.ndarray, proba: np.ndarray, decided: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each decision's confidence and whether it is right, flattened.

    Args:
        truth: [n] class indices, or [n, k] 0/1 (multi-label).
        proba: [n, k] probabilities.
        decided: as ``truth``: the decisions (``LabelSchema.decide``).

    Returns:
        ``(confidence, correct)``: [n] (single-label) or [n * k] (multi-label, row-major).

    Example:
        >>> conf, ok = decisions(np.array([0, 1]), np.array([[.9, .1], [.6, .4]]), np.array([0, 0]))
        >>> conf.round(2).tolist(), ok.tolist()
        ([0.9, 0.6], [True, False])
    """
    confidence = decision_confidence(proba, decided)
    return confidence.reshape(-1), (np.asarray(truth) == np.asarray(decided)).reshape(-1)


def decision_confidence(proba: np.ndarray, decided: np.ndarray) -> np.ndarray:
    """The probability of each decision: [n] (single-label: the arg-max's probability) or
    [n, k] (multi-label: ``p`` where decided present, ``1 - p`` where absent)."""
    proba = np.asarray(proba, dtype=np.float64)
    decided = np.asarray(decided)
    if decided.ndim == 2:
        return np.where(decided == 1, proba, 1.0 - proba)
    return proba.max(axis=1) if proba.shape[1] else np.zeros(len(proba))


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The risk–coverage curve: ``(coverage, risk)`` at every ``k = 1..n`` decisions kept,
    most confident first, ties' errors spread evenly over their places.

    Example:
        >>> cov, risk = risk_coverage(np.array([.9, .8, .7, .6]), np.array([1, 1, 0, 1], bool))
        >>> cov.tolist(), risk.round(3).tolist()
        ([0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.333, 0.25])
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    errors = 1.0 - np.asarray(correct, dtype=np.float64)
    n = len(confidence)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-confidence, kind="stable")
    conf, err = confidence[order], errors[order]
    # ties: every member of a group of equal confidence gets the group's mean error
    _, start, counts = np.unique(-conf, return_index=True, return_counts=True)
    group_error = np.add.reduceat(err, start) / counts
    spread = np.repeat(group_error, counts)
    kept = np.arange(1, n + 1)
    return kept / n, np.cumsum(spread) / kept


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk–coverage curve: the mean risk over ``k = 1..n`` (0 is best)."""
    _, risk = risk_coverage(confidence, correct)
    return float(risk.mean()) if len(risk) else float("nan")


def clopper_pearson(
    right: np.ndarray, kept: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided Clopper–Pearson interval of the share right, ``right / kept``, element
    by element: ``(low, high)`` arrays of the inputs' shape; ``(0, 1)`` where nothing is
    kept.

    Example:
        >>> low, high = clopper_pearson(np.array([9, 3]), np.array([10, 3]))
        >>> low.round(3).tolist(), high.round(3).tolist()
        ([0.555, 0.292], [0.997, 1.0])
    """
    right = np.asarray(right, dtype=np.float64)
    kept = np.asarray(kept, dtype=np.float64)
    alpha = 1.0 - confidence
    # beta.ppf with a zero shape is NaN; those ends are 0 (none right) and 1 (all right)
    low = np.where(right > 0, beta.ppf(alpha / 2, np.maximum(right, 1), kept - right + 1), 0.0)
    high = np.where(
        right < kept, beta.ppf(1 - alpha / 2, right + 1, np.maximum(kept - right, 1)), 1.0
    )
    return low, high


def threshold_for_precision(
    confidence: np.ndarray, correct: np.ndarray, target: float, bound: str = "estimate"
) -> float | None:
    """The lowest confidence threshold ``t`` whose kept decisions (confidence ≥ ``t``) are
    at least ``target`` right: the most coverage reaching ``target``. None when no
    threshold reaches it.

    ``bound="estimate"`` judges the kept decisions by their share right; ``"lower"`` by
    the lower end of its two-sided 95 % Clopper–Pearson interval (``clopper_pearson``, the
    interval ``Selection.as_dict`` reports), so a few lucky answers at a high threshold do
    not pass. For one threshold fixed beforehand that bound is a one-sided 97.5 % bound:
    the precision on new texts like these is at least ``target`` but 2.5 % of the time;
    choosing among many thresholds wears that down a little. It costs coverage.

    Example:
        >>> conf, ok = np.array([.9, .8, .7, .6]), np.array([1, 1, 0, 1], bool)
        >>> threshold_for_precision(conf, ok, .75)
        0.6
        >>> threshold_for_precision(conf, ok, .75, bound="lower") is None  # 4 texts: too few
        True
    """
    if bound not in PRECISION_BOUNDS:
        raise ValueError(f"bound must be one of {PRECISION_BOUNDS}, not {bound!r}")
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if not len(confidence):
        return None
    order = np.argsort(-confidence, kind="stable")
    levels = np.unique(confidence)[::-1]  # candidate thresholds, highest first
    # kept at threshold t: the decisions with confidence >= t, a prefix of ``order``
    kept = len(confidence) - np.searchsorted(np.sort(confidence), levels, side="left")
    kept_right = np.cumsum(correct[order])[kept - 1]
    if bound == "lower":
        reaches = clopper_pearson(kept_right, kept)[0] >= target
    else:
        reaches = kept_right >= target * kept - 1e-12
    reaching = np.flatnonzero(reaches)
    return float(levels[reaching[-1]]) if len(reaching) else None


def threshold_for_coverage(confidence: np.ndarray, target: float) -> float:
    """The highest confidence threshold that keeps at least ``target`` of the decisions.

    Example:
        >>> threshold_for_coverage(np.array([.9, .8, .7, .6]), .5)
        0.8
    """
    ordered = np.sort(np.asarray(confidence, dtype=np.float64))[::-1]
    keep = max(1, int(np.ceil(target * len(ordered) - 1e-9)))
    return float(ordered[keep - 1])


@dataclass(frozen=True)
class Selection:
    """What abstaining below ``threshold`` does to a set of decisions."""

    threshold: float
    decisions: int
    kept: int
    right: int

    @property
    def coverage(self) -> float:
        return self.kept / self.decisions if self.decisions else float("nan")

    @property
    def accuracy(self) -> float:
        return self.right / self.kept if self.kept else float("nan")

    def accuracy_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Clopper–Pearson interval of the selective accuracy: how sure the figure is."""
        low, high = clopper_pearson(self.right, self.kept, confidence)
        return float(low), float(high)

    def as_dict(self) -> dict:
        low, high = self.accuracy_interval()
        return {
            "threshold": self.threshold,
            "coverage": self.coverage,
            "selective_accuracy": self.accuracy if self.kept else None,  # None: no answer
            "selective_accuracy_95ci": [low, high],
            "decisions": self.decisions,
            "kept": self.kept,
        }


def selection(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> Selection:
    """Coverage and selective accuracy when decisions below ``threshold`` are abstained on."""
    keep = np.asarray(confidence) >= threshold
    return Selection(
        threshold=float(threshold),
        decisions=int(len(keep)),
        kept=int(keep.sum()),
        right=int(np.asarray(correct)[keep].sum()),
    )


def selective_f1(truth: np.ndarray, decided: np.ndarray, keep: np.ndarray) -> float:
    """Macro-F1 of the kept single-label decisions ([n] ``keep``), or micro-F1 of the kept
    multi-label cells ([n, k] ``keep``); NaN when nothing is kept."""
    truth, decided, keep = np.asarray(truth), np.asarray(decided), np.asarray(keep, bool)
    if not keep.any():
        return float("nan")
    if truth.ndim == 1:
        labels = np.unique(truth[keep])
        return float(
            f1_score(truth[keep], decided[keep], labels=labels, average="macro", zero_division=0)
        )
    tp = int(((truth == 1) & (decided == 1) & keep).sum())
    fp = int(((truth == 0) & (decided == 1) & keep).sum())
    fn = int(((truth == 1) & (decided == 0) & keep).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def abstaining(proba: np.ndarray, decided: np.ndarray, threshold) -> np.ndarray:
    """Which decisions are abstained on at ``threshold`` (a float, or one per label for a
    multi-label run): [n] or [n, k] booleans; nothing with ``threshold`` None."""
    confidence = decision_confidence(proba, decided)
    if threshold is None:
        return np.zeros(confidence.shape, dtype=bool)
    return confidence < np.asarray(threshold, dtype=np.float64)


def selective_metrics(
    truth: np.ndarray,
    proba: np.ndarray,
    decided: np.ndarray,
    threshold: float | list[float] | None = None,
) -> dict:
    """The selective-prediction block of ``metrics.json``: AURC, the coverage each of
    ``PRECISION_TARGETS`` would keep on these data, and, with a ``threshold`` (the run's
    ``abstain_below``), coverage, selective accuracy and F1 at it.

    Example:
        >>> m = selective_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.3, .7], [.6, .4]]),
        ...                       np.array([0, 1, 0]), threshold=0.65)
        >>> m["coverage"], m["selective_accuracy"], round(m["aurc"], 3)
        (0.6666666666666666, 1.0, 0.111)
    """
    confidence, correct = decisions(truth, proba, decided)
    out: dict = {"aurc": aurc(confidence, correct), "decisions": int(len(confidence))}
    out["coverage_at_precision"] = {}
    for target in PRECISION_TARGETS:
        t = threshold_for_precision(confidence, correct, target)
        kept = selection(confidence, correct, t).coverage if t is not None else 0.0
        out["coverage_at_precision"][str(target)] = kept
    if threshold is None:
        return out
    keep = ~abstaining(proba, decided, threshold)
    kept, right = int(keep.sum()), int((keep & (np.asarray(truth) == decided)).sum())
    chosen = Selection(
        threshold=float(np.min(threshold)), decisions=int(keep.size), kept=kept, right=right
    )
    out.update(chosen.as_dict())
    out["threshold"] = threshold if np.ndim(threshold) else float(threshold)
    out["selective_f1"] = selective_f1(truth, decided, keep) if keep.any() else None
    if keep.ndim == 2:  # per label: how much of each it answers
        out["coverage_per_label"] = keep.mean(axis=0).tolist()
    return out
