"""A run folder: what ``train`` writes and ``evaluate`` / ``predict`` read.

    RUN/
      adapter_config.json, adapter_model.safetensors   the PEFT adapter (LoRA + head)
      tokenizer.json, tokenizer_config.json, ...       the tokenizer, preprocessing included
      labels.json          the label schema (classes, multi-label, thresholds)
      calibration.json     the softmax / sigmoid temperature (1.0 until calibrated)
      config.yaml          the full resolved config, data options included
      metrics.json         test-split metrics + parameter / time / memory accounting
      test_predictions.jsonl
      checkpoints/         Trainer checkpoints while training (removed when it ends)

Final files are written to ``RUN/.staging`` and moved in place at the end, with
``metrics.json`` last: a folder with a ``metrics.json`` is a finished run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from llmclf.calibration import calibration_figures
from llmclf.classifier import CONFIG_FILE, ClassifierBase, read_config
from llmclf.config import DataConfig
from llmclf.data import Examples, content_hash, examples_by_split, sample
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.metrics import classification_metrics
from llmclf.training import CHECKPOINTS, peak_gpu_mb, peak_rss_mb

log = logging.getLogger("llmclf")

METRICS_FILE = "metrics.json"
TEST_PREDICTIONS = "test_predictions.jsonl"


def method_classes() -> dict[str, type[ClassifierBase]]:
    """--method name -> classifier class."""
    from llmclf.encoder import EncoderClassifier
    from llmclf.head import HeadClassifier
    from llmclf.instruct import InstructClassifier
    from llmclf.tfidf import TfidfClassifier

    return {
        "head": HeadClassifier,
        "instruct": InstructClassifier,
        "encoder": EncoderClassifier,
        "tfidf": TfidfClassifier,
    }


def load_classifier(run: str | Path, int8: bool = False, **overrides) -> ClassifierBase:
    """The fitted classifier stored in a run folder, whatever its method; ``int8=True``
    quantizes it for faster prediction on CPU (``ClassifierBase.quantize_int8``)."""
    folder = Path(run)
    finished = (folder / METRICS_FILE).is_file() or (folder / "labels.json").is_file()
    if not finished and (folder / CHECKPOINTS).is_dir():
        raise LlmclfError(
            f"{folder} is an unfinished run: continue it with llmclf train ... --resume"
        )
    method = read_config(folder).get("method")
    classes = method_classes()
    if method not in classes:
        raise LlmclfError(f"{folder} was made by an unknown method {method!r}")
    classifier = classes[method].load(folder, **overrides)
    return classifier.quantize_int8() if int8 else classifier


# ---------------------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------------------


def check_output_folder(output: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run or an unrelated non-empty folder."""
    if not output.exists():
        return
    if not output.is_dir():
        raise LlmclfError(f"--output {output} is a file, not a folder")
    if (output / METRICS_FILE).is_file():
        raise LlmclfError(
            f"{output} already holds a finished run: choose another --output or delete it"
        )
    others = [p.name for p in output.iterdir() if p.name not in (CHECKPOINTS, ".staging")]
    if others and not resume:
        raise LlmclfError(
            f"--output {output} is not empty ({', '.join(sorted(others)[:5])}): choose a new folder"
        )


def train_run(
    method: str,
    options: dict,
    data_config: DataConfig,
    output: str | Path,
    progress: bool = True,
) -> dict:
    """Train on the data's train split, pick the best epoch on validation, evaluate on
    test and write the run folder. Returns the test metrics."""
    output = Path(output)
    classifier = method_classes()[method](progress=progress, **options)
    resume = bool(options.get("resume"))
    check_output_folder(output, resume)
    splits, multi_label = examples_by_split(data_config)
    if "train" not in splits:
        raise LlmclfError(f"{data_config.data} has no training rows")
    train = splits["train"]
    if data_config.train_limit:
        train = sample(
            train, data_config.train_limit, seed=data_config.split_seed, multi_label=multi_label
        )
    validation = splits.get("validation")
    log.info(
        "training %s on %d examples (%s), validating on %d",
        method,
        len(train),
        data_config.data,
        len(validation) if validation else 0,
    )
    eval_set = (validation.texts, validation.labels) if validation is not None else None
    classifier.fit(train.texts, train.labels, eval_set=eval_set, output_dir=output)
    if data_config.label_sep:  # multi-label tables join labels the way the data did
        classifier.schema_.label_sep = data_config.label_sep

    metrics: dict = {}
    predictions = None
    test = splits.get("test")
    if test is not None:
        metrics, predictions = evaluate_examples(classifier, test, f"{data_config.data} [test]")
    metrics.update(accounting(classifier, len(train)))
    metrics.update({"method": method, "data": data_config.data, "split": "test"})
    write_run(
        classifier,
        output,
        data_config,
        metrics,
        predictions,
        keep_checkpoints=options.get("keep_checkpoints", False),
    )
    return metrics


def accounting(classifier: ClassifierBase, n_train: int) -> dict:
    """Parameter, time and memory figures of a fitted classifier (this process)."""
    result = getattr(classifier, "train_result_", None)
    out = {
        "trainable_params": int(classifier.trainable_params_),
        "total_params": int(classifier.total_params_),
        "train_seconds": round(float(classifier.fit_seconds_), 2),
        "train_examples": int(n_train),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if result is not None:
        out["train_steps"] = result.steps
        out["train_examples_per_s"] = round(result.examples_per_second, 3)
        out["train_tokens_per_s"] = round(result.tokens_per_second, 1)
        if result.resumed_from_step is not None:
            out["resumed_from_step"] = result.resumed_from_step
    gpu = peak_gpu_mb()
    if gpu is not None:
        out["peak_gpu_mb"] = round(gpu, 1)
    return out


def write_run(
    classifier: ClassifierBase,
    output: Path,
    data_config: DataConfig,
    metrics: dict,
    predictions: pd.DataFrame | None,
    keep_checkpoints: bool = False,
    predictions_file: str = TEST_PREDICTIONS,
) -> None:
    staging = output / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    classifier.save(staging)
    config = {**classifier.resolved_config(), "data": dataclasses.asdict(data_config)}
    (staging / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    if predictions is not None:
        write_predictions(predictions, staging / predictions_file)
    if hasattr(classifier, "train_result_"):
        history = classifier.train_result_.log_history
        (staging / "train_log.json").write_text(json.dumps(history, indent=1) + "\n")
    for path in staging.iterdir():
        target = output / path.name
        if target.is_dir():
            shutil.rmtree(target)
        path.replace(target)
    staging.rmdir()
    if not keep_checkpoints:
        shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
    write_json(output / METRICS_FILE, metrics)


def write_predictions(frame: pd.DataFrame, path: Path) -> None:
    """A prediction table as JSON lines, atomically; probabilities keep 15 decimals so that
    re-scaling them to another temperature (calibration) stays exact."""
    partial = path.with_name(f".{path.name}.partial")
    frame.to_json(partial, orient="records", lines=True, force_ascii=False, double_precision=15)
    partial.replace(path)


def write_json(path: Path, values: dict) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(values, indent=2) + "\n")
    partial.replace(path)


def zero_shot_run(
    method: str,
    options: dict,
    data_config: DataConfig,
    split: str,
    output: str | Path,
    progress: bool = True,
) -> dict:
    """Evaluate the untrained model answering ``method``'s prompts on one split and write
    a run folder (loadable by ``predict``) with the same metrics.json as a trained run."""
    classes = method_classes()
    if not hasattr(classes.get(method), "zero_shot"):
        able = ", ".join(name for name, cls in classes.items() if hasattr(cls, "zero_shot"))
        raise LlmclfError(
            f"--zero-shot needs a method that answers untrained ({able}), not {method!r}"
        )
    output = Path(output)
    check_output_folder(output, resume=False)
    splits, multi_label = examples_by_split(data_config)
    examples = evaluation_split(data_config, split, multi_label)
    names = {
        lab
        for part in splits.values()
        for row in part.labels
        for lab in (row if multi_label else [row])
    }
    classifier = classes[method](progress=progress, **options).zero_shot(sorted(names), multi_label)
    if data_config.label_sep:
        classifier.schema_.label_sep = data_config.label_sep
    where = f"{data_config.data} [{split}]"
    metrics, predictions = evaluate_examples(classifier, examples, where)
    metrics.update(accounting(classifier, 0))
    metrics.update({"method": method, "zero_shot": True, "data": data_config.data, "split": split})
    write_run(
        classifier,
        output,
        data_config,
        metrics,
        predictions,
        # on the test split it is comparable with trained runs (llmclf compare)
        predictions_file=TEST_PREDICTIONS if split == "test" else "predictions.jsonl",
    )
    return metrics


# ---------------------------------------------------------------------------------------
# Evaluate and predict
# ---------------------------------------------------------------------------------------


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


def evaluation_split(config: DataConfig, split: str, multi_label: bool) -> Examples:
    """One split (or every row, with ``split='all'``) of the data for evaluation."""
    splits, _ = examples_by_split(config, multi_label=multi_label)
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


# ---------------------------------------------------------------------------------------
# Calibrate
# ---------------------------------------------------------------------------------------


def calibrate_run(
    run: str | Path, data_values: dict | None = None, split: str = "validation", **runtime
) -> dict:
    """Fit temperature scaling on a split of the run's data (validation by default) and
    store it in the run's calibration.json, which evaluate / predict / compare then use.

    Returns what was stored: the temperature, before / after NLL, ECE and Brier on the
    calibration split, and on the stored test predictions (``test``) when the run has them.
    """
    from llmclf.classifier import data_config_of
    from llmclf.compare import calibration_before_after, stored_evaluation

    folder = Path(run)
    classifier = load_classifier(folder, **runtime)
    values = {**dataclasses.asdict(data_config_of(folder)), **(data_values or {})}
    config = DataConfig(**values)
    examples = evaluation_split(config, split, classifier.schema_.multi_label)
    if split in ("test", "all"):
        log.warning("calibrating on the %s split makes the test ECE look better than it is", split)
    where = f"{config.data} [{split}]"
    log.info("fitting the temperature on %s: %d examples", where, len(examples))
    classifier.calibrate(examples.texts, examples.labels, where=where)
    stored = dict(classifier.calibration_)
    if (folder / TEST_PREDICTIONS).is_file() and (folder / METRICS_FILE).is_file():
        test = calibration_before_after(
            stored_evaluation(folder, folder.name), classifier.temperature_
        )
        stored["test"] = {"before": test["before"], "after": test["after"]}
    if classifier.schema_.multi_label:  # thresholds moved with the temperature
        write_json(folder / "labels.json", dataclasses.asdict(classifier.schema_))
    write_json(folder / "calibration.json", stored)
    return stored
