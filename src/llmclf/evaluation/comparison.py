"""Compare runs' predictions on one test set: the numbers behind ``llmclf compare``.

Each run is a ``RunEvaluation`` (its test predictions as arrays); ``build_report`` turns
them into one dict: a row per run (quality, calibration before / after temperature
scaling, cost) and, for every pair, McNemar's test and paired-bootstrap intervals of
delta F1. ``report.py`` renders that dict; ``report.json`` is that dict. Nothing here
reads a folder (``runs/compare.py`` does).
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
from llmclf.evaluation.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    holm,
    mcnemar_test,
    paired_bootstrap,
)
from llmclf.labels import LabelSchema


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
    quality = classification_metrics(evaluation.truth, evaluation.predicted, schema.classes)
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
    """McNemar's test and bootstrap intervals of delta F1 (B minus A) for one pair."""
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
    }


def verdict(pair: dict, primary: str, alpha: float) -> str:
    """One line: which run is better, or why the data cannot tell."""
    low, high = (
        (pair["ci_low"], pair["ci_high"])
        if primary == "macro_f1"
        else (pair["micro_ci_low"], pair["micro_ci_high"])
    )
    significant = pair["mcnemar_p_adjusted"] < alpha
    excludes_zero = low > 0 or high < 0
    if significant and excludes_zero:
        return f"{pair['b'] if low > 0 else pair['a']} is better"
    if not significant and not excludes_zero:
        return "no significant difference"
    if significant:
        return "they err on different examples, but the F1 interval includes 0"
    return "F1 interval excludes 0, but McNemar's test is not significant"


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
        pair["verdict"] = verdict(pair, primary, alpha)
    best = max(runs, key=lambda r: r[primary])
    return {
        "llmclf_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "test_set_hash": first.test_hash,
        "n": int(len(first.truth)),
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
            "ece_bins": 15,
        },
        "best_run": best["name"],
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
