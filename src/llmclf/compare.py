"""Compare finished runs on one test set: the numbers behind ``llmclf compare``.

Each run contributes its test predictions, either the ones stored when it was trained
(``test_predictions.jsonl``; every run must then have seen the same test set, checked by
content hash) or fresh ones on a data set given now. ``build_report`` turns them into
one dict: a row per run (quality, calibration before / after temperature scaling, cost)
and, for every pair, McNemar's test and paired-bootstrap intervals of delta F1.
``report.py`` renders that dict; ``report.json`` is that dict.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from llmclf import __version__
from llmclf.calibration import calibration_metrics, forecasts, reliability_bins, rescale_proba
from llmclf.classifier import data_config_of, read_config
from llmclf.config import DataConfig, build, flatten
from llmclf.data import content_hash
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.metrics import classification_metrics
from llmclf.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, holm, mcnemar_test, paired_bootstrap

log = logging.getLogger("llmclf")

# Config keys that say nothing about the model (left out of the "setting" column).
_NOT_SETTINGS = {
    "llmclf_version",
    "resume",
    "keep_checkpoints",
    "device",
    "eval_batch_size",
    "validation_fraction",
    "empty_text",
}


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


# ---------------------------------------------------------------------------------------
# Reading runs
# ---------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise LlmclfError(f"{path.parent} holds no {path.name}: is it a finished llmclf run?")
    return json.loads(path.read_text())


def stored_temperature(folder: Path) -> float:
    path = folder / "calibration.json"
    return float(json.loads(path.read_text()).get("temperature", 1.0)) if path.is_file() else 1.0


def from_frame(
    name: str,
    folder: Path,
    frame: pd.DataFrame,
    metrics: dict,
    run_metrics: dict,
    source: str,
) -> RunEvaluation:
    """A prediction table (text, label, prediction, proba_<class>...) as arrays."""
    schema = LabelSchema.load(folder)
    columns = [f"proba_{c}" for c in schema.classes]
    missing = [c for c in ["text", "label", "prediction", *columns] if c not in frame.columns]
    if missing:
        raise LlmclfError(f"{name}: its predictions lack the columns {', '.join(missing)}")
    labels = [_split(v, schema) for v in frame["label"]]
    predictions = [_split(v, schema) for v in frame["prediction"]]
    unknown = {x for row in labels for x in (row if schema.multi_label else [row])} - set(
        schema.classes
    )
    if unknown:
        raise LlmclfError(f"{name}: the test labels {sorted(unknown)} are not classes of the run")
    texts = [str(t) for t in frame["text"]]
    return RunEvaluation(
        name=name,
        folder=folder,
        schema=schema,
        truth=schema.encode(labels).astype(np.int64),
        predicted=_encode_predictions(predictions, schema),
        proba=frame[columns].to_numpy(dtype=np.float64),
        proba_temperature=float(metrics.get("temperature", 1.0)),
        temperature=stored_temperature(folder),
        test_hash=metrics.get("test_set_hash") or content_hash(texts, labels),
        run_metrics=run_metrics,
        config=flatten(read_config(folder)),
        eval_examples_per_s=metrics.get("eval_examples_per_s"),
        source=source,
    )


def _encode_predictions(predictions: list, schema: LabelSchema) -> np.ndarray:
    """As ``schema.encode``; an unparsed generated answer (an empty single-label
    prediction) is -1: wrong for every example, a false negative of its true class."""
    if schema.multi_label:
        return schema.encode(predictions).astype(np.int64)
    index = {c: i for i, c in enumerate(schema.classes)}
    return np.array([index.get(p, -1) if p else -1 for p in predictions], dtype=np.int64)


def _split(value, schema: LabelSchema):
    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    if not schema.multi_label:
        return text
    return sorted(p for p in text.split(schema.label_sep) if p)


def stored_evaluation(folder: Path, name: str) -> RunEvaluation:
    """The test predictions a run stored when it was trained."""
    metrics = read_json(folder / "metrics.json")
    path = folder / "test_predictions.jsonl"
    if not path.is_file():
        raise LlmclfError(
            f"{folder} has no test_predictions.jsonl (its data had no test split): "
            "pass --data to evaluate every run on one data set"
        )
    frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    return from_frame(name, folder, frame, metrics, metrics, "stored test predictions")


def fresh_evaluation(
    folder: Path, name: str, config: DataConfig, runtime: dict, output: Path | None
) -> RunEvaluation:
    """Evaluate a run now on the test split of ``config``; its predictions and metrics are
    kept under ``output`` if given."""
    from llmclf.runs import (
        evaluate_examples,
        evaluation_split,
        load_classifier,
        write_json,
        write_predictions,
    )

    run_metrics = read_json(folder / "metrics.json")
    classifier = load_classifier(folder, **runtime)
    examples = evaluation_split(config, "test", classifier.schema_.multi_label)
    log.info("%s: evaluating on %s [test] (%d examples)", name, config.data, len(examples))
    metrics, frame = evaluate_examples(classifier, examples, f"{config.data} [test]")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        write_predictions(frame, output / "predictions.jsonl")
        write_json(output / "metrics.json", {**metrics, "data": config.data, "split": "test"})
    return from_frame(name, folder, frame, metrics, run_metrics, f"evaluated on {config.data}")


def run_names(folders: list[Path]) -> list[str]:
    """Folder names, made unique with their parents' names where two runs share one."""
    names = [f.name for f in folders]
    depth = 1
    while len(set(names)) < len(names) and depth < 6:
        depth += 1
        names = ["/".join(f.parts[-depth:]) for f in folders]
    if len(set(names)) < len(names):
        raise LlmclfError("the same run is listed twice: give each run once")
    return names


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


# ---------------------------------------------------------------------------------------
# The report's numbers
# ---------------------------------------------------------------------------------------


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


def differing_settings(evaluations: list[RunEvaluation]) -> list[dict]:
    """Per run, its config values that are not the same in every run (method, model,
    pooling, seed, ...): what tells the runs apart."""
    keys = sorted({k for e in evaluations for k in e.config} - _NOT_SETTINGS)
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
) -> dict:
    """The whole comparison as one JSON-ready dict (``report.json``)."""
    if len(evaluations) < 2:
        raise LlmclfError("compare needs at least two runs")
    check_same_test_set(evaluations)
    first = evaluations[0]
    multi_label = first.schema.multi_label
    primary = "micro_f1" if multi_label else "macro_f1"
    alpha = 1 - confidence
    settings = differing_settings(evaluations)
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


def compare_runs(
    runs: list[str | Path],
    output: str | Path,
    data_values: dict | None = None,
    runtime: dict | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> dict:
    """Compare finished runs and write the report to ``output``; returns the report dict.

    Without ``data_values`` the runs' stored test predictions are used (their test sets
    must be the same); with them (at least ``data``), every run is evaluated on the test
    split of that data set (read with the first run's column options unless given) first,
    its predictions kept in ``output/evaluations/NAME``.

    Example:
        >>> compare_runs(["runs/last", "runs/mean"], "reports/pooling")  # doctest: +SKIP
    """
    from llmclf.report import check_report_folder, write_report

    folders = [Path(r) for r in runs]
    if len(folders) < 2:
        raise LlmclfError("compare needs at least two runs")
    for folder in folders:
        if not (folder / "metrics.json").is_file():
            raise LlmclfError(f"{folder} is not a finished llmclf run (it has no metrics.json)")
    output = Path(output)
    check_report_folder(output)
    names = run_names(folders)
    if data_values:
        # One test set for all: the first run's data options, overridden by the ones given.
        stored = dataclasses.asdict(data_config_of(folders[0]))
        config = build(DataConfig, {**stored, **data_values})
        evaluations = [
            fresh_evaluation(
                f, n, config, runtime or {}, output / "evaluations" / n.replace("/", "__")
            )
            for f, n in zip(folders, names)
        ]
    else:
        evaluations = [stored_evaluation(f, n) for f, n in zip(folders, names)]
    report = build_report(evaluations, resamples, seed, confidence)
    write_report(report, output)
    return report
