"""Paired significance tests for two classifiers scored on the same test examples.

Pure functions on arrays. Two questions, two tools:

- *Do the two models make different mistakes more often one way than the other?* The
  exact McNemar test: of the examples exactly one model gets right (the discordant pairs),
  how surprising is the split under "each is equally likely" (a fair coin)?
- *How large is the difference in F1, and how sure are we?* A paired bootstrap: resample
  test examples with replacement (the same rows for both models), recompute both F1 scores,
  and take the percentile interval of their difference.
- *How large a difference could this test set have found?* The minimum detectable effect:
  ``(z_{1-α/2} + z_{power}) · SE(ΔF1)``, with SE the paired bootstrap's standard deviation.

docs/evaluation.md gives the definitions and how to read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom, chi2, norm

from llmclf.errors import LlmclfError

BOOTSTRAP_RESAMPLES = 10_000
MIN_RESAMPLES = 2_000
BOOTSTRAP_SEED = 0
# The power at which the minimum detectable effect of a pair is stated.
MDE_POWER = 0.8
# The chi-square approximation is only offered when the discordant pairs are this many.
CHI2_MIN_DISCORDANT = 25
# Resampled index rows are processed in chunks of at most this many (row, label) cells.
_CHUNK_CELLS = 4_000_000


# ---------------------------------------------------------------------------------------
# McNemar
# ---------------------------------------------------------------------------------------


@dataclass
class McNemarResult:
    """``only_a``: examples A gets right and B wrong; ``only_b``: the reverse."""

    only_a: int
    only_b: int
    p_value: float
    method: str  # "exact" (binomial) or "chi2" (continuity-corrected)
    statistic: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def mcnemar_test(
    correct_a: np.ndarray, correct_b: np.ndarray, method: str = "exact"
) -> McNemarResult:
    """McNemar's test on per-example correctness of two models on the same examples.

    ``exact`` (the default, used by every llmclf report): two-sided binomial test of
    ``only_a`` successes in ``only_a + only_b`` trials with p = 1/2, that is
    ``min(1, 2 * P[X <= min(only_a, only_b)])``; it is valid at every count and costs
    microseconds. ``chi2``: Edwards' continuity-corrected statistic
    ``(|only_a - only_b| - 1)^2 / (only_a + only_b)`` on one degree of freedom, a good
    approximation only with many discordant pairs, so it is refused below 25 of them.

    Args:
        correct_a, correct_b: [n] booleans, example i answered correctly by A / B.

    Example:
        >>> a = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 1], dtype=bool)
        >>> b = np.array([0, 0, 0, 0, 0, 0, 1, 0, 1, 1], dtype=bool)
        >>> r = mcnemar_test(a, b)
        >>> (r.only_a, r.only_b, round(r.p_value, 4))  # 6 vs 0: 2 * 0.5**6
        (6, 0, 0.0312)
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape or correct_a.ndim != 1:
        raise LlmclfError("McNemar needs two equally long vectors of per-example correctness")
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    if method == "exact":
        p = (
            1.0
            if discordant == 0
            else min(1.0, 2.0 * binom.cdf(min(only_a, only_b), discordant, 0.5))
        )
        return McNemarResult(only_a, only_b, float(p), "exact")
    if method == "chi2":
        if discordant < CHI2_MIN_DISCORDANT:
            raise LlmclfError(
                f"the chi-square McNemar test needs at least {CHI2_MIN_DISCORDANT} discordant "
                f"pairs (there are {discordant}): use the exact test"
            )
        statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
        return McNemarResult(only_a, only_b, float(chi2.sf(statistic, 1)), "chi2", statistic)
    raise LlmclfError(f"McNemar method must be exact or chi2, not {method!r}")


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, for several pairs tested on one test set.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return [round(float(v), 12) for v in out]


# ---------------------------------------------------------------------------------------
# F1 from counts, for many resamples at once
# ---------------------------------------------------------------------------------------


def indicator(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[n] class indices -> [n, k] one-hot, -1 (no class: an unparsed answer) -> a row of
    zeros; [n, k] indicators pass through (as int8)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.int8)
    out = np.zeros((len(labels), num_classes), dtype=np.int8)
    known = labels >= 0
    out[np.flatnonzero(known), labels[known]] = 1
    return out


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Macro and micro F1 from per-class counts [..., k] (a class with no true and no
    predicted example scores 0, as scikit-learn's ``zero_division=0``).

    Example:
        >>> macro, micro = f1_from_counts(np.array([2, 0]), np.array([1, 0]), np.array([0, 1]))
        >>> round(float(macro), 4), round(float(micro), 4)
        (0.4, 0.6667)
    """
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(denominator > 0, 2 * tp / denominator, 0.0)
        total = denominator.sum(axis=-1)
        micro = np.where(total > 0, 2 * tp.sum(axis=-1) / total, 0.0)
    return per_class.mean(axis=-1), micro


def _counts(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[n, 3, k] per-example true-positive / false-positive / false-negative indicators."""
    return np.stack([truth & predicted, ~truth & predicted, truth & ~predicted], axis=1).astype(
        np.int32
    )


# ---------------------------------------------------------------------------------------
# Paired bootstrap
# ---------------------------------------------------------------------------------------


def bootstrap_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The [n] row indices of each resample in turn.

    Resamples are drawn one after another from ``numpy.random.default_rng(seed)`` with
    ``integers(0, n, size=n)``, so a result depends only on (n, resamples, seed).

    Example:
        >>> [r.tolist() for r in bootstrap_indices(3, 2, seed=0)]
        [[2, 1, 1], [0, 0, 0]]
    """
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.integers(0, n, size=n)


@dataclass
class BootstrapResult:
    """Observed F1 differences (B - A) with percentile confidence intervals."""

    delta_macro_f1: float
    macro_ci: tuple[float, float]
    delta_micro_f1: float
    micro_ci: tuple[float, float]
    resamples: int
    confidence: float
    seed: int
    # Share of resamples in which B's F1 is higher than A's.
    prob_b_better_macro: float
    prob_b_better_micro: float
    # Standard deviation of the resampled differences: the standard error of delta F1.
    macro_se: float
    micro_se: float
    # The smallest delta F1 this test set detects at ``confidence`` with ``power``.
    macro_mde: float
    micro_mde: float
    power: float = MDE_POWER

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_deltas(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    num_classes: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> np.ndarray:
    """[resamples, 2] differences (B - A) of macro-F1 and micro-F1 on resampled test sets.

    Resample r scores both models on the rows ``bootstrap_indices(n, resamples, seed)``
    yields r-th. Labels are class indices [n] or multi-label indicators [n, k].

    Example:
        >>> y = np.array([0, 1, 0, 1]); a = np.array([0, 1, 0, 1]); b = np.array([0, 1, 1, 1])
        >>> bootstrap_deltas(y, a, b, num_classes=2, resamples=3).shape
        (3, 2)
    """
    truth = indicator(y_true, num_classes).astype(bool)
    n = len(truth)
    counts_a = _counts(truth, indicator(pred_a, num_classes).astype(bool))
    counts_b = _counts(truth, indicator(pred_b, num_classes).astype(bool))
    # A resample's counts are (how often each row was drawn) @ (each row's counts).
    both = np.concatenate([counts_a, counts_b], axis=1).reshape(n, -1).astype(np.float64)
    deltas = np.empty((resamples, 2))
    chunk = max(1, _CHUNK_CELLS // n)
    rows = bootstrap_indices(n, resamples, seed)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        index = np.stack([next(rows) for _ in range(size)])
        drawn = np.bincount((index + n * np.arange(size)[:, None]).ravel(), minlength=size * n)
        summed = (drawn.reshape(size, n) @ both).reshape(size, 2, 3, num_classes)
        macro, micro = f1_from_counts(summed[:, :, 0], summed[:, :, 1], summed[:, :, 2])
        deltas[start : start + size, 0] = macro[:, 1] - macro[:, 0]
        deltas[start : start + size, 1] = micro[:, 1] - micro[:, 0]
    return deltas


def paired_bootstrap(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    num_classes: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> BootstrapResult:
    """Paired bootstrap of delta macro-F1 and delta micro-F1 (B minus A).

    Each resample draws n test rows with replacement (the same rows for A and B), scores
    both models on them and keeps the difference (``bootstrap_deltas``); the interval is
    the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of those
    differences (numpy's default linear interpolation). The point estimate is the
    difference on the original test set. The standard error is the standard deviation
    of the differences (``ddof=1``) and the minimum detectable effect follows from it
    (``minimum_detectable_effect``). Works on class indices [n] or multi-label
    indicators [n, k].

    Example:
        >>> y = np.array([0, 1, 2] * 20); a = y.copy(); b = y.copy(); b[:12] = (b[:12] + 1) % 3
        >>> r = paired_bootstrap(y, a, b, num_classes=3, resamples=2000)
        >>> round(r.delta_micro_f1, 2), r.micro_ci[1] < 0  # B makes 12 more mistakes in 60
        (-0.2, True)
    """
    if resamples < MIN_RESAMPLES:
        raise LlmclfError(f"use at least {MIN_RESAMPLES} bootstrap resamples, not {resamples}")
    if not 0.5 < confidence < 1:
        raise LlmclfError(f"the confidence level must be between 0.5 and 1, not {confidence}")
    truth = indicator(y_true, num_classes).astype(bool)
    observed = [
        f1_from_counts(*_counts(truth, indicator(p, num_classes).astype(bool)).sum(axis=0))
        for p in (pred_a, pred_b)
    ]
    deltas = bootstrap_deltas(y_true, pred_a, pred_b, num_classes, resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail], axis=0)
    se = deltas.std(axis=0, ddof=1)
    return BootstrapResult(
        delta_macro_f1=float(observed[1][0] - observed[0][0]),
        macro_ci=(float(low[0]), float(high[0])),
        delta_micro_f1=float(observed[1][1] - observed[0][1]),
        micro_ci=(float(low[1]), float(high[1])),
        resamples=resamples,
        confidence=confidence,
        seed=seed,
        prob_b_better_macro=float(np.mean(deltas[:, 0] > 0)),
        prob_b_better_micro=float(np.mean(deltas[:, 1] > 0)),
        macro_se=float(se[0]),
        micro_se=float(se[1]),
        macro_mde=minimum_detectable_effect(float(se[0]), confidence),
        micro_mde=minimum_detectable_effect(float(se[1]), confidence),
    )


def minimum_detectable_effect(
    standard_error: float, confidence: float = 0.95, power: float = MDE_POWER
) -> float:
    """The smallest true difference a two-sided test at level ``1 - confidence`` finds
    with probability ``power``, for an estimate with this ``standard_error``:
    ``(z_{1-α/2} + z_{power}) · SE``, α = 1 - confidence (the normal approximation; at
    95 % and 80 % power the factor is 1.960 + 0.842 = 2.802).

    A paired bootstrap's spread of delta F1 is the ``standard_error`` llmclf uses: taken
    as the same under "no difference" and under a difference of this size, the interval
    excludes 0 in ``power`` of test sets drawn like this one when the runs truly differ by
    the returned amount; a smaller difference is found less often, and one under
    ``z_{1-α/2} · SE`` less often than not.

    Example:
        >>> round(minimum_detectable_effect(0.01), 4)  # (1.9600 + 0.8416) * 0.01
        0.028
        >>> round(minimum_detectable_effect(0.01, confidence=0.99), 4)  # (2.5758 + 0.8416)
        0.0342
    """
    if not 0.5 < confidence < 1:
        raise LlmclfError(f"the confidence level must be between 0.5 and 1, not {confidence}")
    if not 0 < power < 1:
        raise LlmclfError(f"the power must be between 0 and 1, not {power}")
    alpha = 1 - confidence
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * standard_error)
