"""``llmclf train`` and ``llmclf evaluate --zero-shot``: make a run folder.

Both check every option and the output folder before any data or model is loaded, then
write the finished folder through ``write_run`` (staged, ``metrics.json`` last).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from llmclf.backbone import check_model_ref
from llmclf.config import REQUIRED, DataConfig, Options, build, option
from llmclf.data import examples_by_split, sample
from llmclf.distributed import is_main_process, world_size
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.methods.base import ClassifierBase
from llmclf.methods.registry import method_class
from llmclf.run_folder import (
    CHECKPOINTS,
    METRICS_FILE,
    STAGING,
    TEST_PREDICTIONS,
    TRAIN_LOG,
    RunFolder,
    replace_contents,
    write_json,
    write_predictions,
)
from llmclf.runs.evaluate import evaluate_examples
from llmclf.speed import thread_settings
from llmclf.training import check_tracker, peak_gpu_mb, peak_rss_mb

log = logging.getLogger("llmclf")


@dataclasses.dataclass
class TrainOptions(Options):
    """llmclf train: which method, and the new run folder. The method's own options (its
    config's sections) and the data options (``DataConfig``) come with it."""

    output: str = option(REQUIRED, "the new run folder")
    method: str = option("head", "the method: see `llmclf train --help` (default: head)")


def train(options: TrainOptions, **values) -> dict | None:
    """``llmclf train``: ``train_run`` with ``values``, data options (``DataConfig``) and
    the method's; one that ``options.method`` does not have is refused in one line."""
    from llmclf.config import field_names, flag

    data_names = field_names(DataConfig)
    data_values = {k: v for k, v in values.items() if k in data_names}
    method_options = {k: v for k, v in values.items() if k not in data_names}
    allowed = method_class(options.method).config_class.option_names()
    unknown = sorted(set(method_options) - allowed)
    if unknown:
        raise LlmclfError(
            f"{', '.join(flag(u) for u in unknown)} does not apply to --method {options.method}"
        )
    return train_run(options.method, method_options, build(DataConfig, data_values), options.output)


def train_run(
    method: str,
    options: dict,
    data_config: DataConfig,
    output: str | Path,
    progress: bool = True,
) -> dict | None:
    """Train on the data's train split, pick the best epoch on validation, evaluate on
    test and write the run folder. Returns the test metrics (None in the processes other
    than the main one of a multi-process run: they train and stop).

    Example:
        >>> train_run("head", {"epochs": 2}, DataConfig("bbc-news"), "runs/bbc")  # doctest: +SKIP
    """
    start = time.perf_counter()
    classifier = method_class(method)(progress=progress, **options)
    config = classifier.resolve_config()  # a bad option fails before any data loads
    train_cfg = getattr(config, "train", None)
    resume = bool(train_cfg and train_cfg.resume)
    folder = RunFolder(output)
    folder.check_new(resume)
    if hasattr(config, "model"):
        check_model_ref(config.model.model)
    if train_cfg is not None:
        check_tracker(train_cfg.report_to)
    splits, multi_label = examples_by_split(data_config)
    if "train" not in splits:
        raise LlmclfError(f"{data_config.data} has no training rows")
    train = splits["train"]
    if data_config.train_limit:
        train = sample(
            train, data_config.train_limit, seed=data_config.split_seed, multi_label=multi_label
        )
    validation, test = splits.get("validation"), splits.get("test")
    warnings = check_splits(
        train, validation, test, multi_label, data_config.data, config.labels.label_hierarchy
    )
    log.info(
        "training %s on %d examples (%s), validating on %d",
        method,
        len(train),
        data_config.data,
        len(validation) if validation else 0,
    )
    eval_set = (validation.texts, validation.labels) if validation is not None else None
    classifier.fit(train.texts, train.labels, eval_set=eval_set, output_dir=folder.path)
    if not is_main_process():
        # several processes (torchrun / accelerate launch) trained one model together; the
        # main process evaluates it on test and writes the folder, so each example counts once
        return None
    if data_config.label_sep:  # multi-label tables join labels the way the data did
        classifier.schema_.label_sep = data_config.label_sep

    metrics: dict = {}
    predictions = None
    if test is not None:
        metrics, predictions = evaluate_examples(classifier, test, f"{data_config.data} [test]")
    metrics.update(accounting(classifier, len(train)))
    metrics.update({"method": method, "data": data_config.data, "split": "test"})
    if warnings:
        metrics["warnings"] = warnings
    # data + model loading, training and testing: what a cell of a grid costs (this process)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
    keep = bool(train_cfg and train_cfg.keep_checkpoints)
    write_run(classifier, folder.path, data_config, metrics, predictions, keep_checkpoints=keep)
    return metrics


def check_splits(
    train, validation, test, multi_label: bool, data: str, hierarchy: str | None = None
) -> list[str]:
    """Before training: refuse evaluation labels the training split lacks and a
    ``--label-hierarchy`` the classes do not use (they would fail only after training),
    and return a warning (logged now, printed in the summary and kept in metrics.json)
    for each split that is missing."""
    schema = LabelSchema.from_labels(train.labels, multi_label).with_hierarchy(hierarchy)
    for name, part in (("validation", validation), ("test", test)):
        if part is not None:
            schema.check_known(part.labels, f"{data} [{name}] (not in its training split)")
    warnings = []
    if validation is None:
        warnings.append(
            f"{data} has no validation rows: the last epoch is kept, multi-label thresholds "
            "stay at 0.5"
        )
    if test is None:
        warnings.append(f"{data} has no test rows: this run has no test metrics")
    for warning in warnings:
        log.warning(warning)
    return warnings


def accounting(classifier: ClassifierBase, n_train: int) -> dict:
    """Parameter, time and memory figures of a fitted classifier (this process)."""
    result = getattr(classifier, "train_result_", None)
    before = result.seconds_before_resume if result is not None else 0.0
    out = {
        "trainable_params": int(classifier.trainable_params_),
        "total_params": int(classifier.total_params_),
        # a resumed run: this process plus the training the killed one had checkpointed
        "train_seconds": round(float(classifier.fit_seconds_) + before, 2),
        "train_examples": int(n_train),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # the processes that trained it together (torchrun / accelerate launch); 1 alone
        "num_processes": world_size(),
        "threads": thread_settings(),
    }
    # what the method decided while fitting (a head run's --pooling auto), with its figures
    out.update(getattr(classifier, "fit_choices_", None) or {})
    abstention = getattr(classifier, "abstention_", None)
    if abstention is not None:  # --target-precision / --target-coverage: what was chosen
        out["abstention"] = abstention
    if result is not None:
        if result.tracking is not None:
            out["tracking"] = result.tracking
        out["train_steps"] = result.steps
        out["train_examples_per_s"] = round(result.examples_per_second, 3)
        out["train_tokens_per_s"] = round(result.tokens_per_second, 1)
        if result.token_budget is not None:
            out["token_budget"] = result.token_budget
        if result.resumed_from_step is not None:
            out["resumed_from_step"] = result.resumed_from_step
            out["train_seconds_before_resume"] = round(before, 2)
    placement = getattr(classifier, "placement_", None)  # tfidf has none
    if placement is not None:  # device, dtype, threads and malloc, decided once
        out["dtype"] = str(placement.dtype).removeprefix("torch.")
        if placement.dtype_probe is not None:  # --dtype auto on a CPU: what the probe measured
            out["dtype_probe"] = placement.dtype_probe
        out["placement"] = placement.figures()
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
    """The finished run folder: every file staged in ``RUN/.staging``, moved in place,
    then ``metrics.json`` (the mark of a finished run) last."""
    output = Path(output)
    staging = output / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    classifier.save(staging, extra_config={"data": dataclasses.asdict(data_config)})
    if predictions is not None:
        write_predictions(predictions, staging / predictions_file)
    if hasattr(classifier, "train_result_"):
        write_json(staging / TRAIN_LOG, classifier.train_result_.log_history)
    replace_contents(staging, output)
    if not keep_checkpoints:
        shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
    write_json(output / METRICS_FILE, metrics)
