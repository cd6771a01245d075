"""``llmclf evaluate`` and ``llmclf predict``: put a finished run to work on data.

``load_classifier`` opens any run folder (whatever its method); ``evaluate_run`` scores it
on a labelled split and writes ``metrics.json`` + ``predictions.jsonl`` (``predict_file``,
which labels a table of any size, is in ``runs/predict.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmclf.config import DataConfig, Options, build, option, same_as
from llmclf.data import (
    Examples,
    content_hash,
    examples_by_split,
)
from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import calibration_figures
from llmclf.evaluation.hierarchy import parent_figures
from llmclf.evaluation.metrics import classification_metrics
from llmclf.evaluation.selective import selective_metrics
from llmclf.labels import LabelSchema
from llmclf.methods.base import ClassifierBase
from llmclf.methods.exported import is_export, load_export
from llmclf.methods.registry import method_classes
from llmclf.run_folder import (
    EVAL_FOLDER,
    METRICS_FILE,
    PREDICTIONS,
    RunFolder,
    write_json,
    write_predictions,
)
from llmclf.speed import thread_settings

log = logging.getLogger("llmclf")


def _run_own(name: str):
    return same_as(DataConfig, name, default=None)


@dataclasses.dataclass
class EvaluationData(Options):
    """Where the labelled examples come from (evaluate, calibrate, compare); an option left
    unset reads the data the way the run was trained on it."""

    data: str | None = _run_own("data")
    text_column: list[str] | None = _run_own("text_column")
    label_column: str | None = _run_own("label_column")
    label_sep: str | None = _run_own("label_sep")
    empty_text: str | None = _run_own("empty_text")
    split_seed: int | None = _run_own("split_seed")

    def given(self) -> dict[str, Any]:
        """The options set (what overrides the run's own data options)."""
        return {k: v for k, v in self.as_dict().items() if v is not None}


@dataclasses.dataclass
class EvaluateOptions(Options):
    """llmclf evaluate: a run on a data split (or, with --zero-shot, an untrained model)."""

    run: str | None = option(None, "a run folder written by `llmclf train`")
    zero_shot: bool = option(
        False,
        "evaluate the untrained --model answering the instruct prompts instead of a RUN "
        "(writes a run folder to --output, default runs/zero-shot-MODEL-DATA-MODE)",
    )
    method: str | None = option(
        None, "with --zero-shot: the method whose prompts (default instruct)"
    )
    split: str | None = option(
        None,
        "train, validation, test or all (default: test, or all of a file given with --data "
        "that has no split column; a split named here is cut from such a file 80/10/10 as "
        "in training)",
    )
    output: str | None = option(None, "folder for metrics.json (default RUN/eval)")


def load_classifier(run: str | Path, int8: bool = False, **overrides) -> ClassifierBase:
    """The fitted classifier stored in a run folder, whatever its method; ``int8=True``
    quantizes it for faster prediction on CPU (``ClassifierBase.quantize_int8``). An export
    of a run (``llmclf export``) opens in its runtime: an ``OnnxClassifier`` (ONNX Runtime)
    or a ``GgufClassifier`` (llama.cpp).

    Example:
        >>> clf = load_classifier("runs/bbc", device="cpu")  # doctest: +SKIP
        >>> clf.predict("Shares fell sharply on Monday")  # doctest: +SKIP
        'business'
    """
    folder = RunFolder(run)
    if folder.unfinished:
        raise LlmclfError(
            f"{folder} is an unfinished run: continue it with llmclf train ... --resume"
        )
    if is_export(folder.path):  # llmclf export: run by ONNX Runtime or llama.cpp
        abstain_below = overrides.pop("abstain_below", None)
        hierarchy = overrides.pop("label_hierarchy", None)
        exported = load_export(folder.path, int8=int8, **overrides)
        if hierarchy is not None:
            exported.schema_ = exported.schema_.with_hierarchy(hierarchy)
        return exported.set_abstention(abstain_below) if abstain_below is not None else exported
    method = folder.config().get("method")
    classes = method_classes()
    if method not in classes:
        raise LlmclfError(f"{folder} was made by an unknown method {method!r}")
    classifier = classes[method].load(folder.path, **overrides)
    return classifier.quantize_int8() if int8 else classifier


def data_config_for(run: str | Path, data_values: dict | None = None) -> DataConfig:
    """The data options a run was trained with (columns, separator), overridden by
    ``data_values``: how evaluate, calibrate and compare read data for that run."""
    stored = RunFolder(run).data_values()
    return build(DataConfig, {**stored, **(data_values or {})})


def evaluation_split(
    config: DataConfig, split: str, multi_label: bool, whole_file: bool = False
) -> Examples:
    """One split (or every row, with ``split='all'``) of the data for evaluation.

    ``whole_file``: a file given to evaluate on that has no ``split`` column is evaluated
    whole, whatever ``split`` says (the 80/10/10 split is for training files: a run's own
    data, read again, is split as it was in training).
    """
    splits, _ = examples_by_split(config, multi_label=multi_label, split_files=not whole_file)
    if set(splits) == {"all"}:
        log.info(
            "%s has no 'split' column: evaluating all %d rows", config.data, len(splits["all"])
        )
        return splits["all"]
    if split == "all":
        parts = [splits[name] for name in ("train", "validation", "test") if name in splits]
        return Examples(
            texts=[t for p in parts for t in p.texts],
            labels=[lab for p in parts for lab in p.labels],
            frame=pd.concat([p.frame for p in parts], ignore_index=True),
        )
    if split not in splits:
        raise LlmclfError(
            f"{config.data} has no {split!r} split (it has {', '.join(splits)}); pass --split all for every row"
        )
    return splits[split]


def evaluate_examples(
    classifier: ClassifierBase, examples: Examples, where: str
) -> tuple[dict, pd.DataFrame]:
    """Metrics and a per-example prediction table for labelled ``examples``."""
    schema: LabelSchema = classifier.schema_
    schema.check_known(examples.labels, where)
    start = time.perf_counter()
    details = classifier.predict_details(examples.texts)
    proba = details.proba
    seconds = time.perf_counter() - start
    decided = schema.decide(proba)
    truth = schema.encode(examples.labels)
    metrics = classification_metrics(
        truth.astype(np.int64), decided, schema.classes, schema.hierarchy
    )
    # ECE / Brier / NLL at the run's temperature, and before calibration when it has one.
    metrics.update(
        calibration_figures(
            truth.astype(np.int64), proba, schema.multi_label, float(classifier.temperature_)
        )
    )
    # answering only when confident: AURC, coverage at fixed precisions, and at the run's
    # --abstain-below (the figures above are at full coverage, every answer given)
    metrics["selective"] = selective_metrics(truth, proba, decided, schema.abstain_below)
    if schema.hierarchy and schema.abstain_below is not None:  # what the parents said
        metrics["selective"]["parents"] = parent_figures(
            list(examples.labels),
            schema.parents(proba, decided),
            schema.abstains(proba, decided),
            schema.hierarchy,
        )
    metrics["eval_seconds"] = round(seconds, 2)
    metrics["eval_examples_per_s"] = round(len(examples) / seconds, 3) if seconds > 0 else None
    dtype = getattr(classifier, "dtype_", None)
    if dtype is not None:  # the precision it predicted in (a run loads in its own)
        metrics["eval_dtype"] = str(dtype).removeprefix("torch.")
    metrics["eval_threads"] = thread_settings()
    placement = getattr(classifier, "placement_", None)
    if placement is not None:  # the device, dtype, threads and malloc it predicted with
        metrics["placement"] = placement.figures()
    metrics["test_set_hash"] = content_hash(examples.texts, examples.labels)
    metrics.update(details.figures)
    frame = prediction_frame(
        pd.DataFrame(
            {"text": examples.texts, "label": [schema.join(lab) for lab in examples.labels]}
        ),
        schema,
        proba,
        decided,
    )
    for name, values in details.columns.items():
        frame[name] = values
    return metrics, frame


def prediction_frame(
    rows: pd.DataFrame, schema: LabelSchema, proba: np.ndarray, decided: np.ndarray
) -> pd.DataFrame:
    """``rows`` plus ``prediction`` and one ``proba_<class>`` column per class.

    A run that abstains (``schema.abstain_below``) adds ``abstained`` (true where an answer
    is withheld): a withheld single-label answer is an empty ``prediction``; a multi-label
    row lists only the labels it answers, and ``abstained_labels`` the ones it withholds.
    A hierarchical run that abstains (``schema.hierarchy``) adds ``parent``: the parent
    of a withheld answer it is still sure of (``LabelSchema.parents``), else empty.
    The probabilities stay whole, so the full answer is never lost."""
    out = rows.copy()
    if schema.abstain_below is None:
        out["prediction"] = [schema.join(lab) for lab in schema.decode(decided)]
    else:
        withheld = schema.abstains(proba, decided)
        if schema.multi_label:
            answered = schema.decode(np.where(withheld, 0, decided))
            out["prediction"] = [schema.join(lab) for lab in answered]
            out["abstained"] = withheld.any(axis=1)
            out["abstained_labels"] = [schema.join(lab) for lab in schema.decode(withheld)]
        else:
            labels = schema.decode(decided)
            out["prediction"] = [
                "" if off else schema.join(lab) for lab, off in zip(labels, withheld)
            ]
            out["abstained"] = withheld
            if schema.hierarchy:  # what it is still sure of where it withholds the class
                out["parent"] = [p or "" for p in schema.parents(proba, decided)]
    for j, name in enumerate(schema.classes):
        out[f"proba_{name}"] = proba[:, j]
    return out


def _check_output_folder(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise LlmclfError(f"--output {output} is a file: give a folder for the evaluation")


def evaluate_run(
    run: str | Path,
    data_values: dict | None = None,
    *,
    split: str | None = None,
    output: str | Path | None = None,
    data_config: DataConfig | None = None,
    int8: bool = False,
    **runtime,
) -> tuple[dict, pd.DataFrame]:
    """Evaluate a finished run on one split of its data (``data_values`` override the
    data options it was trained with; ``data_config`` replaces them) and write
    ``metrics.json`` and ``predictions.jsonl`` to ``output`` (default ``RUN/eval``).

    ``split`` None: the test split, except that a file given in ``data_values`` (or
    ``data_config``) without a ``split`` column is evaluated whole; a ``split`` named
    explicitly is cut from such a file as in training (80/10/10, ``split_seed``). ``runtime`` options (``device``, ``eval_batch_size``, an instruct run's
    ``predict_mode``, ...) change how the run predicts. Returns the metrics and the
    per-example prediction table.

    Example:
        >>> metrics, _ = evaluate_run("runs/bbc", split="test")  # doctest: +SKIP
        >>> metrics["macro_f1"]  # doctest: +SKIP
        0.964
    """
    config = data_config or data_config_for(run, data_values)
    given = data_config is not None or "data" in (data_values or {})
    whole_file = given and split is None
    split = split or "test"
    folder = Path(output) if output else Path(run) / EVAL_FOLDER
    _check_output_folder(folder)
    classifier = load_classifier(run, int8=int8, **runtime)
    examples = evaluation_split(config, split, classifier.schema_.multi_label, whole_file)
    log.info("evaluating %s on %s [%s]: %d examples", run, config.data, split, len(examples))
    metrics, predictions = evaluate_examples(classifier, examples, f"{config.data} [{split}]")
    metrics.update({"method": classifier.method, "data": config.data, "split": split})
    if int8:
        metrics["int8"] = True
    folder.mkdir(parents=True, exist_ok=True)
    write_predictions(predictions, folder / PREDICTIONS)
    write_json(folder / METRICS_FILE, metrics)
    return metrics, predictions
