"""``llmclf compare``: read finished runs' test predictions and write the comparison.

Each run contributes its test predictions, either the ones stored when it was trained
(``test_predictions.jsonl``; every run must then have seen the same test set, checked by
content hash) or fresh ones on a data set given now. ``build_report`` turns them into
one dict: a row per run (quality, calibration before / after temperature scaling, cost)
and, for every pair, McNemar's test and paired-bootstrap intervals of delta F1.
``evaluation/report.py`` renders that dict; ``report.json`` is that dict.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from llmclf.config import (
    REQUIRED,
    DataConfig,
    LabelsConfig,
    LoadOptions,
    Options,
    flag,
    flatten,
    option,
    runtime_names,
    same_as,
)
from llmclf.data import content_hash
from llmclf.errors import LlmclfError
from llmclf.evaluation.comparison import RunEvaluation, build_report
from llmclf.evaluation.report import render
from llmclf.evaluation.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MIN_RESAMPLES
from llmclf.labels import LabelSchema
from llmclf.methods.exported import is_export
from llmclf.methods.registry import section_classes
from llmclf.run_folder import (
    EVALUATIONS,
    REPORT_JSON,
    STAGING,
    TEST_PREDICTIONS,
    RunFolder,
    replace_contents,
)
from llmclf.runs.evaluate import EvaluationData, data_config_for, evaluate_run

log = logging.getLogger("llmclf")


def _check_resamples(name: str, value: int) -> None:
    if value < MIN_RESAMPLES:
        raise LlmclfError(f"{flag(name)} must be at least {MIN_RESAMPLES}, not {value}")


def _check_confidence(name: str, value: float) -> None:
    if not 0.5 < value < 1:
        raise LlmclfError(f"{flag(name)} must be between 0.5 and 1, not {value}")


@dataclasses.dataclass
class CompareOptions(Options):
    """llmclf compare: runs tested against each other on one test set."""

    runs: list[str] = option(REQUIRED, "two or more run folders")
    output: str = option(REQUIRED, "the report folder")
    resamples: int = option(
        BOOTSTRAP_RESAMPLES, "paired-bootstrap resamples", check=_check_resamples
    )
    seed: int = option(BOOTSTRAP_SEED, "bootstrap seed")
    confidence: float = option(
        0.95,
        "confidence level of the intervals; 1 - it is the significance level",
        check=_check_confidence,
    )
    split: str | None = option(
        None,
        "with --data: the split to evaluate every run on, train, validation, test or all "
        "(default: test, or all of a file without a split column)",
    )
    label_hierarchy: str | None = same_as(
        LabelsConfig,
        "label_hierarchy",
        help="read every run's classes as paths with this separator (e.g. '/'): macro-F1 "
        "per level beside each run's (default: each run's own, if it has one)",
    )


def compare(
    options: CompareOptions, data: EvaluationData | None = None, load: LoadOptions | None = None
) -> dict:
    """``llmclf compare``: ``compare_runs`` with the command's rules (column options and
    ``--split`` need ``--data``). Returns the report dict."""
    data_values = (data or EvaluationData()).given()
    if data_values and "data" not in data_values:
        raise LlmclfError("column options need --data: compare evaluates the runs on that data set")
    if options.split is not None and not data_values:
        raise LlmclfError(
            "--split needs --data: without it the runs' stored test predictions are compared"
        )
    return compare_runs(
        options.runs,
        options.output,
        data_values=data_values or None,
        runtime=(load or LoadOptions()).overrides(),
        resamples=options.resamples,
        seed=options.seed,
        confidence=options.confidence,
        split=options.split,
        hierarchy=options.label_hierarchy,
    )


def from_frame(
    name: str,
    folder: Path,
    frame: pd.DataFrame,
    metrics: dict,
    run_metrics: dict,
    source: str,
) -> RunEvaluation:
    """A prediction table (text, label, prediction, proba_<class>...) as arrays.

    Rows marked ``abstained: true`` (a run with ``--abstain-below``) withheld their
    answer; compare scores every run at full coverage, so their decision is made again
    from the probabilities (``LabelSchema.decide``) rather than counted wrong."""
    schema = LabelSchema.load(folder)
    columns = [f"proba_{c}" for c in schema.classes]
    missing = [c for c in ["text", "label", "prediction", *columns] if c not in frame.columns]
    if missing:
        raise LlmclfError(f"{name}: its predictions lack the columns {', '.join(missing)}")
    labels = [_split(v, schema) for v in frame["label"]]
    withheld = _abstained(frame)
    # a withheld answer's text (empty, or a reserved word) is no decision of the model
    predictions = [_split(None if w else v, schema) for v, w in zip(frame["prediction"], withheld)]
    unknown = {x for row in labels for x in (row if schema.multi_label else [row])} - set(
        schema.classes
    )
    if unknown:
        raise LlmclfError(f"{name}: the test labels {sorted(unknown)} are not classes of the run")
    texts = [str(t) for t in frame["text"]]
    evaluation = RunEvaluation(
        name=name,
        folder=folder,
        schema=schema,
        truth=schema.encode(labels).astype(np.int64),
        predicted=_encode_predictions(predictions, schema),
        proba=frame[columns].to_numpy(dtype=np.float64),
        proba_temperature=float(metrics.get("temperature", 1.0)),
        temperature=RunFolder(folder).temperature(),
        test_hash=metrics.get("test_set_hash") or content_hash(texts, labels),
        run_metrics=run_metrics,
        config=flatten(RunFolder(folder).config()),
        eval_examples_per_s=metrics.get("eval_examples_per_s"),
        source=source,
    )
    if withheld.any():
        decided = schema.decide(evaluation.current_proba[withheld])
        evaluation.predicted[withheld] = decided
    return evaluation


def _abstained(frame: pd.DataFrame) -> np.ndarray:
    """[n] booleans: the rows whose answer was withheld (``abstained`` true; a
    multi-label row's per-label list when any label was withheld); all False when the
    table has no such column."""
    if "abstained" not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return np.array([_withheld(v) for v in frame["abstained"]], dtype=bool)


def _withheld(value) -> bool:
    if isinstance(value, (list, tuple, np.ndarray)):
        return any(_withheld(v) for v in value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return str(value).strip().lower() in {"true", "1", "1.0"}


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
    metrics = RunFolder(folder).metrics()
    path = folder / TEST_PREDICTIONS
    if not path.is_file():
        raise LlmclfError(
            f"{folder} has no {TEST_PREDICTIONS} (its data had no test split): "
            "pass --data to evaluate every run on one data set"
        )
    frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    return from_frame(name, folder, frame, metrics, metrics, "stored test predictions")


def fresh_evaluation(
    folder: Path,
    name: str,
    config: DataConfig,
    runtime: dict,
    output: Path,
    split: str | None = None,
) -> RunEvaluation:
    """Evaluate a run now on ``split`` of ``config`` (as ``evaluate_run``: by default the
    test split, or all of a file without a ``split`` column); its predictions and metrics
    are kept under ``output``."""
    # an export has no training of its own to cost
    run_metrics = {} if is_export(folder) else RunFolder(folder).metrics()
    log.info("%s: evaluating on %s", name, config.data)
    metrics, frame = evaluate_run(folder, data_config=config, split=split, output=output, **runtime)
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


def compare_runs(
    runs: list[str | Path],
    output: str | Path,
    data_values: dict | None = None,
    runtime: dict | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
    split: str | None = None,
    hierarchy: str | None = None,
) -> dict:
    """Compare finished runs and write the report to ``output``; returns the report dict.

    Without ``data_values`` the runs' stored test predictions are used (their test sets
    must be the same); with them (at least ``data``), every run is first evaluated on
    ``split`` of that data set (default: test, or the whole of a file without a ``split``
    column), read with the first run's column options unless given, and its predictions
    are kept in ``output/evaluations/NAME``. ``hierarchy``: read every run's classes as
    paths joined by it (per-level figures; default each run's own ``--label-hierarchy``).

    Example:
        >>> compare_runs(["runs/last", "runs/mean"], "reports/pooling")  # doctest: +SKIP
    """
    folders = [Path(r) for r in runs]
    if len(folders) < 2:
        raise LlmclfError("compare needs at least two runs")
    for folder in folders:
        RunFolder(folder).config()  # missing, a file, or not a run: said as such
        if is_export(folder):
            if not data_values:
                raise LlmclfError(
                    f"{folder} is an export: it stores no test predictions of its own; pass "
                    "--data (the run's own data file, say) to evaluate every run on one data set"
                )
        elif not RunFolder(folder).finished:
            raise LlmclfError(f"{folder} is not a finished llmclf run (it has no metrics.json)")
    output = Path(output)
    check_report_folder(output)
    names = run_names(folders)
    if data_values:
        # One test set for all: the first run's data options, overridden by the ones given.
        config = data_config_for(folders[0], data_values)
        new_folder = not output.exists()
        try:
            evaluations = [
                fresh_evaluation(
                    f, n, config, runtime or {}, output / EVALUATIONS / n.replace("/", "__"), split
                )
                for f, n in zip(folders, names)
            ]
        except LlmclfError:  # refused: leave no half-made report folder behind
            if new_folder:
                shutil.rmtree(output, ignore_errors=True)
            raise
    else:
        evaluations = [stored_evaluation(f, n) for f, n in zip(folders, names)]
    if hierarchy is not None:
        for evaluation in evaluations:
            evaluation.schema = evaluation.schema.with_hierarchy(hierarchy)
    ignore = runtime_names(*section_classes()) | {"llmclf_version"}
    report = build_report(evaluations, resamples, seed, confidence, ignore_settings=ignore)
    write_report(report, output)
    return report


def check_report_folder(output: Path) -> None:
    """Refuse a file, or a non-empty folder that does not hold an earlier report."""
    if not output.exists():
        return
    if not output.is_dir():
        raise LlmclfError(f"--output {output} is a file, not a folder")
    names = {p.name for p in output.iterdir()} - {STAGING, EVALUATIONS}
    if names and REPORT_JSON not in names:
        raise LlmclfError(
            f"--output {output} is not empty and holds no earlier report: choose a new folder"
        )


def write_report(report: dict, output: str | Path) -> Path:
    """report.json, report.md, figures/*.png and report.html in ``output``: staged in
    ``output/.staging`` and moved in place, report.json last (a crash leaves the previous
    report, or none, never half of one)."""
    output = Path(output)
    check_report_folder(output)
    staging = output / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "figures").mkdir(parents=True)
    for name, content in render(report).items():
        (staging / name).write_bytes(content)
    replace_contents(staging, output, last=REPORT_JSON)
    return output / "report.html"
