"""Compare runs' predictions on one test set: the numbers behind ``llmclf compare``.

Each run is a ``RunEvaluation`` (its test predictions as arrays); ``build_report`` turns
them into one dict: a row per run (quality, calibration before / after temperature
scaling, selective prediction, cost), for every pair McNemar's test, paired-bootstrap
intervals of delta F1 and the smallest delta the test set could detect, and a headline
that names a best run only when the test set tells it apart from every other.
``report.py`` renders that dict; ``report.json`` is that dict. Nothing here reads a
folder (``runs/compare.py`` does).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmclf._version import __version__
from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import (
    calibration_metrics,
    forecasts,
    reliability_bins,
    rescale_proba,
)
from llmclf.evaluation.metrics import classification_metrics
from llmclf.evaluation.selective import decisions, risk_coverage, selective_metrics
from llmclf.evaluation.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    MDE_POWER,
    holm,
    mcnemar_test,
    paired_bootstrap,
)
from llmclf.labels import LabelSchema

# The risk–coverage curve kept in report.json per run, for the figure: at most this many
# points (a test set of 7,000 examples, or 270,000 multi-label decisions, needs no more).
CURVE_POINTS = 200


@dataclass
class RunEvaluation:
    """One run's predictions on the compared test set, as arrays."""

    name: str
    folder: Path
    schema: LabelSchema
    truth: np.ndarray  # [n] class indices, or [n, k] 0/1 (multi-label)
    predicted: np.ndarray  # same shape as truth
    proba: np.ndarray  # [n, k], made at ``proba_temperature``
    proba_temperature: float
    temperature: float  # the run's temperature now (calibration.json)
    test_hash: str
    run_metrics: dict  # the run's metrics.json: parameters, time, memory
    config: dict = field(default_factory=dict)
    eval_examples_per_s: float | None = None
    source: str = "stored test predictions"

    @property
    def correct(self) -> np.ndarray:
        """Per-example correctness (the whole label set, for multi-label)."""
        if self.truth.ndim == 2:
            return (self.truth == self.predicted).all(axis=1)
        return self.truth == self.predicted

    @property
    def current_proba(self) -> np.ndarray:
        """The probabilities at the run's temperature now, what ``predict`` gives today
        and where its thresholds and ``abstain_below`` apply. A single-label row of zeros
        (an unreadable generated answer) stays zeros: it was never a forecast."""
        multi_label = self.schema.multi_label
        proba = rescale_proba(self.proba, multi_label, self.proba_temperature, self.temperature)
        if not multi_label:
            proba = np.where((self.proba > 0).any(axis=1, keepdims=True), proba, 0.0)
        return proba


def check_same_test_set(evaluations: list[RunEvaluation]) -> None:
    """Refuse runs whose test sets (by content) or label sets differ."""
    first = evaluations[0]
    for other in evaluations[1:]:
        if other.test_hash != first.test_hash:
            raise LlmclfError(
                f"{first.name} and {other.name} were tested on different test sets "
                "(content hashes differ): pass --data D to evaluate every run on D's test split"
            )
        if other.schema.classes != first.schema.classes:
            raise LlmclfError(
                f"{first.name} and {other.name} predict different classes: they cannot be compared"
            )
        if other.schema.multi_label != first.schema.multi_label:
            raise LlmclfError(
                f"{first.name} is {'multi' if first.schema.multi_label else 'single'}-label and "
                f"{other.name} is not: they cannot be compared"
            )


def run_row(evaluation: RunEvaluation, settings: dict) -> dict:
    """Quality, calibration and cost figures of one run."""
    schema = evaluation.schema
    quality = classification_metrics(
        evaluation.truth, evaluation.predicted, schema.classes, schema.hierarchy
    )
    calibration = calibration_before_after(evaluation, evaluation.temperature, reliability=True)
    cost = evaluation.run_metrics
    return {
        "name": evaluation.name,
        "folder": str(evaluation.folder),
        "method": evaluation.config.get("method"),
        "model": evaluation.config.get("model"),
        "settings": settings,
        "source": evaluation.source,
        **{k: v for k, v in quality.items() if k != "per_class"},
        "per_class": quality["per_class"],
        "calibration": calibration,
        "selective": selective_row(evaluation),
        "trainable_params": cost.get("trainable_params"),
        "total_params": cost.get("total_params"),
        "train_seconds": cost.get("train_seconds"),
        "train_examples": cost.get("train_examples"),
        "peak_rss_mb": cost.get("peak_rss_mb"),
        "peak_gpu_mb": cost.get("peak_gpu_mb"),
        "eval_examples_per_s": evaluation.eval_examples_per_s,
    }


def calibration_before_after(
    evaluation: RunEvaluation, temperature: float, reliability: bool = False
) -> dict:
    """ECE / Brier / NLL of the uncalibrated probabilities (T = 1) and, when ``temperature``
    is not 1, of the same predictions at ``temperature`` (None otherwise)."""
    multi_label = evaluation.schema.multi_label
    truth = evaluation.truth
    raw = rescale_proba(evaluation.proba, multi_label, evaluation.proba_temperature, 1.0)
    out = {"temperature": temperature, "before": calibration_metrics(truth, raw), "after": None}
    if reliability:
        out["reliability_before"] = reliability_bins(*forecasts(truth, raw)).as_dict()
        out["reliability_after"] = None
    if temperature != 1.0:
        scaled = rescale_proba(raw, multi_label, 1.0, temperature)
        out["after"] = calibration_metrics(truth, scaled)
        if reliability:
            out["reliability_after"] = reliability_bins(*forecasts(truth, scaled)).as_dict()
    return out


def selective_row(evaluation: RunEvaluation) -> dict:
    """Selective prediction of one run (``evaluation/selective.py``) on its full-coverage
    decisions at its current temperature: AURC, the coverage each precision target keeps
    and, when the run abstains (``schema.abstain_below``), coverage, selective accuracy
    and F1 at its threshold; ``curve``: the risk–coverage curve at up to ``CURVE_POINTS``
    coverages, for the figure. NaN (nothing kept) is written as None."""
    truth, predicted = evaluation.truth, evaluation.predicted
    proba = evaluation.current_proba
    out = selective_metrics(truth, proba, predicted, evaluation.schema.abstain_below)
    coverage, risk = risk_coverage(*decisions(truth, proba, predicted))
    kept = np.unique(np.linspace(0, len(coverage) - 1, CURVE_POINTS).round().astype(int))
    out["curve"] = {"coverage": coverage[kept].tolist(), "risk": risk[kept].tolist()}
    return _without_nan(out)


def _without_nan(value):
    """NaN as None, in nested dicts and lists (report.json is strict JSON)."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def differing_settings(evaluations: list[RunEvaluation], ignore: Iterable[str] = ()) -> list[dict]:
    """Per run, its config values that are not the same in every run (method, model,
    pooling, seed, ...): what tells the runs apart. ``ignore``: options that say how a
    run executed, not what it is."""
    keys = sorted({k for e in evaluations for k in e.config} - set(ignore))
    varying = [
        k
        for k in keys
        if len({json.dumps(_plain(e.config.get(k)), sort_keys=True) for e in evaluations}) > 1
    ]
    # an option another method has and this run lacks (a head run's verbalizer) is left out
    return [{k: e.config[k] for k in varying if e.config.get(k) is not None} for e in evaluations]


def _plain(value):
    """2 and 2.0 are the same setting (a YAML int and a float default)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def compare_pair(
    a: RunEvaluation, b: RunEvaluation, resamples: int, seed: int, confidence: float
) -> dict:
    """McNemar's test, bootstrap intervals of delta F1 (B minus A) and the smallest delta
    this test set could detect (``stats.minimum_detectable_effect``) for one pair."""
    mcnemar = mcnemar_test(a.correct, b.correct)
    boot = paired_bootstrap(
        a.truth, a.predicted, b.predicted, a.schema.num_classes, resamples, confidence, seed
    )
    return {
        "a": a.name,
        "b": b.name,
        "n": int(len(a.truth)),
        "a_correct": int(a.correct.sum()),
        "b_correct": int(b.correct.sum()),
        "only_a_correct": mcnemar.only_a,
        "only_b_correct": mcnemar.only_b,
        "mcnemar_p": mcnemar.p_value,
        "mcnemar_test": mcnemar.method,
        "delta_macro_f1": boot.delta_macro_f1,
        "ci_low": boot.macro_ci[0],
        "ci_high": boot.macro_ci[1],
        "delta_micro_f1": boot.delta_micro_f1,
        "micro_ci_low": boot.micro_ci[0],
        "micro_ci_high": boot.micro_ci[1],
        "prob_b_better_macro": boot.prob_b_better_macro,
        "prob_b_better_micro": boot.prob_b_better_micro,
        "se_macro_f1": boot.macro_se,
        "se_micro_f1": boot.micro_se,
        "mde_macro_f1": boot.macro_mde,
        "mde_micro_f1": boot.micro_mde,
    }


def _interval(pair: dict, primary: str) -> tuple[float, float]:
    if primary == "macro_f1":
        return pair["ci_low"], pair["ci_high"]
    return pair["micro_ci_low"], pair["micro_ci_high"]


def _straddles(pair: dict, primary: str) -> bool:
    low, high = _interval(pair, primary)
    return low <= 0 <= high


def better_run(pair: dict, primary: str, alpha: float) -> str | None:
    """The run of the pair both tests find better (McNemar p < ``alpha``, Holm-adjusted,
    and the primary metric's delta interval on its side of 0), or None."""
    low, high = _interval(pair, primary)
    if pair["mcnemar_p_adjusted"] < alpha and (low > 0 or high < 0):
        return pair["b"] if low > 0 else pair["a"]
    return None


def no_difference(mde: float) -> str:
    """What a delta interval straddling 0 says, with the smallest delta the test set
    could have found."""
    if mde == 0:  # every resample scores both alike: the runs agree wherever it matters
        return "no difference (the same F1 on every resample)"
    return f"no detectable difference (could detect ≥ {mde:.4f})"


def verdict(pair: dict, primary: str, alpha: float) -> str:
    """One line: which run is better, or why the data cannot tell.

    Example:
        >>> pair = {"a": "x", "b": "y", "ci_low": -0.01, "ci_high": 0.03,
        ...         "mcnemar_p_adjusted": 0.4, "mde_macro_f1": 0.0281}
        >>> verdict(pair, "macro_f1", 0.05)
        'no detectable difference (could detect ≥ 0.0281)'
    """
    better = better_run(pair, primary, alpha)
    if better is not None:
        return f"{better} is better"
    if _straddles(pair, primary):
        text = no_difference(pair[f"mde_{primary}"])
        if pair["mcnemar_p_adjusted"] < alpha:
            return text + ", though McNemar's test finds they err on different examples"
        return text
    return "F1 interval excludes 0, but McNemar's test is not significant"


def headline(runs: list[dict], pairs: list[dict], primary: str, n: int) -> tuple[str | None, str]:
    """The report's first line, and the best run it names: the run with the highest
    primary metric, when both tests find it better than every other run (each pair's
    ``better_run``); otherwise None, and the line says which runs it cannot be told from
    and the smallest difference the test set could have detected.

    Example:
        >>> runs = [{"name": "x", "macro_f1": 0.80}, {"name": "y", "macro_f1": 0.82}]
        >>> pair = {"a": "x", "b": "y", "ci_low": -0.01, "ci_high": 0.05,
        ...         "better_run": None, "mde_macro_f1": 0.0451}
        >>> headline(runs, [pair], "macro_f1", 300)[1]
        'No best macro-F1 on 300 test examples: no detectable difference (could detect ≥ 0.0451) between y (0.8200) and x (0.8000).'
    """
    label = primary.replace("_f1", "-F1")
    score = {r["name"]: r[primary] for r in runs}
    top = max(runs, key=lambda r: r[primary])["name"]
    against = {(p["b"] if p["a"] == top else p["a"]): p for p in pairs if top in (p["a"], p["b"])}

    def named(others: list[str]) -> str:
        return ", ".join(f"{o} ({score[o]:.4f})" for o in others)

    def widest(others: list[str]) -> float:
        return max(against[o][f"mde_{primary}"] for o in others)

    beaten = [o for o, p in against.items() if p["better_run"] == top]
    if len(beaten) == len(against):
        return top, (
            f"Best {label}: {named([top])} on {n} test examples, better than {named(beaten)} "
            f"by both tests (this test set could detect ≥ {widest(beaten):.4f})."
        )
    straddling = [o for o, p in against.items() if _straddles(p, primary)]
    unproven = [o for o in against if o not in beaten and o not in straddling]
    parts = []
    if straddling:
        parts.append(
            f"{no_difference(widest(straddling))} between {named([top])} and {named(straddling)}"
        )
    if unproven:
        parts.append(
            f"{named([top])} scores higher than {named(unproven)}, but McNemar's test is not "
            f"significant (this test set could detect ≥ {widest(unproven):.4f})"
        )
    if beaten:
        parts.append(f"{top} is better than {named(beaten)}")
    return None, f"No best {label} on {n} test examples: " + "; ".join(parts) + "."


def build_report(
    evaluations: list[RunEvaluation],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
    ignore_settings: Iterable[str] = (),
) -> dict:
    """The whole comparison as one JSON-ready dict (``report.json``); ``ignore_settings``
    are config keys never shown as what tells runs apart."""
    if len(evaluations) < 2:
        raise LlmclfError("compare needs at least two runs")
    check_same_test_set(evaluations)
    first = evaluations[0]
    multi_label = first.schema.multi_label
    primary = "micro_f1" if multi_label else "macro_f1"
    alpha = 1 - confidence
    settings = differing_settings(evaluations, ignore_settings)
    runs = [run_row(e, s) for e, s in zip(evaluations, settings)]
    pairs = [
        compare_pair(a, b, resamples, seed, confidence)
        for a, b in itertools.combinations(evaluations, 2)
    ]
    for pair, adjusted in zip(pairs, holm([p["mcnemar_p"] for p in pairs])):
        pair["mcnemar_p_adjusted"] = adjusted
        pair["better_run"] = better_run(pair, primary, alpha)
        pair["verdict"] = verdict(pair, primary, alpha)
    n = int(len(first.truth))
    best, line = headline(runs, pairs, primary, n)
    return {
        "llmclf_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "test_set_hash": first.test_hash,
        "n": n,
        "classes": first.schema.classes,
        "multi_label": multi_label,
        "primary_metric": primary,
        "settings": {
            "bootstrap_resamples": resamples,
            "bootstrap_seed": seed,
            "confidence": confidence,
            "alpha": alpha,
            "mcnemar": "exact binomial, two-sided",
            "p_adjustment": "holm" if len(pairs) > 1 else "none",
            "mde_power": MDE_POWER,
            "mde": "(z_{1-alpha/2} + z_{power}) * SE, SE = std of the paired bootstrap's delta",
            "ece_bins": 15,
        },
        "headline": line,
        "best_run": best,
        "highest_run": max(runs, key=lambda r: r[primary])["name"],
        "runs": runs,
        "pairs": pairs,
        "confusion": {e.name: confusion(e) for e in evaluations},
    }


def confusion(evaluation: RunEvaluation) -> list[list[int]]:
    """Single-label: [k, k] counts, rows true, columns predicted. Multi-label: per label
    [k, 4] counts of (true positive, false negative, false positive, true negative)."""
    k = evaluation.schema.num_classes
    truth, predicted = evaluation.truth, evaluation.predicted
    if truth.ndim == 2:
        return [
            [
                int(np.sum((truth[:, j] == 1) & (predicted[:, j] == 1))),
                int(np.sum((truth[:, j] == 1) & (predicted[:, j] == 0))),
                int(np.sum((truth[:, j] == 0) & (predicted[:, j] == 1))),
                int(np.sum((truth[:, j] == 0) & (predicted[:, j] == 0))),
            ]
            for j in range(k)
        ]
    matrix = np.zeros((k, k), dtype=np.int64)
    parsed = predicted >= 0  # unparsed answers are in no column
    np.add.at(matrix, (truth[parsed], predicted[parsed]), 1)
    return matrix.tolist()
