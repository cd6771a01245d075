"""``llmclf evaluate`` and ``llmclf predict``: put a finished run to work on data.

``load_classifier`` opens any run folder (whatever its method); ``evaluate_run`` scores it
on a labelled split and writes ``metrics.json`` + ``predictions.jsonl`` (``predict_file``,
which labels a table of any size, is in ``runs/predict.py``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from llmclf.config import DataConfig, build
from llmclf.data import (
    Examples,
    content_hash,
    examples_by_split,
)
from llmclf.errors import LlmclfError
from llmclf.evaluation.calibration import calibration_figures
from llmclf.evaluation.metrics import classification_metrics
from llmclf.labels import LabelSchema
from llmclf.methods.base import ClassifierBase
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


def load_classifier(run: str | Path, int8: bool = False, **overrides) -> ClassifierBase:
    """The fitted classifier stored in a run folder, whatever its method; ``int8=True``
    quantizes it for faster prediction on CPU (``ClassifierBase.quantize_int8``).

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
    proba = classifier.predict_proba(examples.texts)
    seconds = time.perf_counter() - start
    decided = schema.decide(proba)
    truth = schema.encode(examples.labels)
    metrics = classification_metrics(truth.astype(np.int64), decided, schema.classes)
    # ECE / Brier / NLL at the run's temperature, and before calibration when it has one.
    metrics.update(
        calibration_figures(
            truth.astype(np.int64), proba, schema.multi_label, float(classifier.temperature_)
        )
    )
    metrics["eval_seconds"] = round(seconds, 2)
    metrics["eval_examples_per_s"] = round(len(examples) / seconds, 3) if seconds > 0 else None
    dtype = getattr(classifier, "dtype_", None)
    if dtype is not None:  # the precision it predicted in (a run loads in its own)
        metrics["eval_dtype"] = str(dtype).removeprefix("torch.")
    metrics["eval_threads"] = thread_settings()
    metrics["test_set_hash"] = content_hash(examples.texts, examples.labels)
    figures, columns = classifier.prediction_extras()
    metrics.update(figures)
    frame = prediction_frame(
        pd.DataFrame(
            {"text": examples.texts, "label": [schema.join(lab) for lab in examples.labels]}
        ),
        schema,
        proba,
        decided,
    )
    for name, values in columns.items():
        frame[name] = values
    return metrics, frame


def prediction_frame(
    rows: pd.DataFrame, schema: LabelSchema, proba: np.ndarray, decided: np.ndarray
) -> pd.DataFrame:
    """``rows`` plus ``prediction`` and one ``proba_<class>`` column per class."""
    out = rows.copy()
    out["prediction"] = [schema.join(lab) for lab in schema.decode(decided)]
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
