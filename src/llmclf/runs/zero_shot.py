"""``llmclf evaluate``, and its ``--zero-shot``: the untrained model answering a method's
prompts, evaluated on one split and written as a run folder like a trained run.

The command's dispatch lives here, above ``train.py`` (which writes run folders) and
``evaluate.py`` (which evaluates them), since a zero-shot run needs both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmclf.backbone import check_model_ref
from llmclf.config import DataConfig, PredictLoadOptions, build, flag, predict_time_names
from llmclf.data import examples_by_split
from llmclf.errors import LlmclfError
from llmclf.methods.registry import every_config_class, method_class, method_classes
from llmclf.run_folder import PREDICTIONS, TEST_PREDICTIONS, RunFolder
from llmclf.runs.evaluate import (
    EVAL_FOLDER,
    EvaluateOptions,
    EvaluationData,
    evaluate_examples,
    evaluate_run,
    evaluation_split,
)
from llmclf.runs.train import accounting, write_run


def evaluate(
    options: EvaluateOptions,
    data: EvaluationData | None = None,
    load: PredictLoadOptions | None = None,
    **method_options: Any,
) -> tuple[dict, Path]:
    """``llmclf evaluate``: ``evaluate_run`` on ``options.run``, or with
    ``options.zero_shot`` ``zero_shot_run`` (``method_options``: the untrained model's
    options, e.g. ``model``, ``verbalizer``). ``method_options`` of a trained run may only
    be predict-time ones (``predict_mode``): the run keeps what it was trained with.
    Returns the metrics and the folder written."""
    data = data or EvaluationData()
    load = load or PredictLoadOptions()
    if options.zero_shot:
        if options.run is not None:
            raise LlmclfError("--zero-shot evaluates an untrained --model: give no RUN folder")
        if load.int8:
            raise LlmclfError(
                "--int8 applies to trained runs; --zero-shot runs in the model's dtype"
            )
        method = options.method or "instruct"
        model_options = {**method_options, **load.overrides()}
        data_config = build(DataConfig, data.given())
        folder = Path(options.output or zero_shot_folder(method, model_options, data_config))
        split = options.split or "test"
        return zero_shot_run(method, model_options, data_config, split, folder), folder
    if options.run is None:
        raise LlmclfError("evaluate needs a RUN folder (or --zero-shot --model M --data D)")
    fixed = sorted(set(method_options) - predict_time_names(*every_config_class()))
    if options.method is not None:
        fixed.insert(0, "method")
    if fixed:
        flags = ", ".join(flag(k) for k in fixed)
        raise LlmclfError(f"{flags} only apply with --zero-shot: a trained run keeps its own")
    folder = Path(options.output or Path(options.run) / EVAL_FOLDER)
    metrics, _ = evaluate_run(
        options.run,
        data.given(),
        split=options.split,
        output=folder,
        int8=load.int8,
        **load.overrides(),
        **method_options,
    )
    return metrics, folder


def _slug(name: str) -> str:
    """A file-name-safe short form of a model or data reference."""
    stem = Path(name).stem if Path(name).suffix else Path(name).name
    return "".join(c if c.isalnum() or c in "._" else "-" for c in stem).strip("-") or "x"


def zero_shot_folder(method: str, options: dict, data_config: DataConfig) -> Path:
    """Where a zero-shot run goes by default: runs/zero-shot-MODEL-DATA-MODE."""
    config = method_class(method)(**options).resolve_config()
    mode = getattr(getattr(config, "instruct", None), "predict_mode", None)
    parts = ["zero-shot", _slug(config.model.model), _slug(data_config.data)]
    return Path("runs") / "-".join([*parts, *([mode] if mode else [])])


def zero_shot_run(
    method: str,
    options: dict,
    data_config: DataConfig,
    split: str,
    output: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate the untrained model answering ``method``'s prompts on one split and write
    a run folder (loadable by ``predict``) with the same metrics.json as a trained run:
    ``output``, by default ``zero_shot_folder`` (runs/zero-shot-MODEL-DATA-MODE)."""
    start = time.perf_counter()
    classes = method_classes()
    cls = method_class(method)
    if not hasattr(cls, "zero_shot"):
        able = ", ".join(name for name, c in classes.items() if hasattr(c, "zero_shot"))
        raise LlmclfError(
            f"--zero-shot needs a method that answers untrained ({able}), not {method!r}"
        )
    classifier = cls(progress=progress, **options)
    config = classifier.resolve_config()
    folder = RunFolder(output or zero_shot_folder(method, options, data_config))
    folder.check_new(resume=False)
    check_model_ref(config.model.model)
    splits, multi_label = examples_by_split(data_config)
    examples = evaluation_split(data_config, split, multi_label)
    names = {
        lab
        for part in splits.values()
        for row in part.labels
        for lab in (row if multi_label else [row])
    }
    classifier.zero_shot(sorted(names), multi_label)
    if data_config.label_sep:
        classifier.schema_.label_sep = data_config.label_sep
    where = f"{data_config.data} [{split}]"
    metrics, predictions = evaluate_examples(classifier, examples, where)
    metrics.update(accounting(classifier, 0))
    metrics.update({"method": method, "zero_shot": True, "data": data_config.data, "split": split})
    metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
    write_run(
        classifier,
        folder.path,
        data_config,
        metrics,
        predictions,
        # on the test split it is comparable with trained runs (llmclf compare)
        predictions_file=TEST_PREDICTIONS if split == "test" else PREDICTIONS,
    )
    return metrics
