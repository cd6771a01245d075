"""The ``llmclf`` command: one subcommand, one parser function, one library call.

Every option of the config sections becomes a flag (``lora_r`` -> ``--lora-r``). Values
come from the dataclass defaults, then ``--config run.yaml``, then the flags given; the
library function that does the work (``train_run``, ``evaluate_run``, ``predict_file``,
...) validates them all before it loads data or a model. A user mistake prints one
``llmclf: error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from llmclf.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    build,
    field_names,
    flag,
    predict_time_names,
    read_yaml,
    runtime_names,
)
from llmclf.distributed import is_main_process, rank
from llmclf.errors import LlmclfError

log = logging.getLogger("llmclf")

# Data options that say how to read labelled rows of a file (evaluate, calibrate, compare).
EVALUATION_DATA_OPTIONS = (
    "data",
    "text_column",
    "label_column",
    "label_sep",
    "empty_text",
    "split_seed",
)


def _registry():
    from llmclf.methods import registry

    return registry


def overridable_names() -> set[str]:
    """Options a finished run takes anew when it is loaded: every method's runtime and
    predict-time options (``device``, ``eval_batch_size``, ``predict_mode``, ...)."""
    configs = _registry().every_config_class()
    return runtime_names(*configs) | predict_time_names(*configs)


# ---------------------------------------------------------------------------------------
# Flags from dataclasses
# ---------------------------------------------------------------------------------------


def _flag_type(annotation: str):
    base = annotation.replace(" ", "").split("|")[0]
    return {"int": int, "float": float}.get(base, str)


def add_options(
    parser: argparse.ArgumentParser, cls: type, only: tuple[str, ...] | set[str] | None = None
) -> None:
    """One ``--flag`` per dataclass field, in a group named after the class."""
    group = parser.add_argument_group(
        cls.__doc__.strip().splitlines()[0] if cls.__doc__ else cls.__name__
    )
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = " ".join(default) if isinstance(default, list) else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        annotation = str(f.type)
        if annotation == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif annotation.startswith("list"):
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = _flag_type(annotation)
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        group.add_argument(flag(f.name), **kwargs)


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """Where the examples to evaluate on come from, and how to run the model on them."""
    add_options(parser, DataConfig, only=EVALUATION_DATA_OPTIONS)
    add_options(parser, ModelConfig, only=("device", "dtype", "trust_remote_code"))
    add_options(parser, TrainConfig, only=("eval_batch_size",))


def add_int8_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--int8",
        action="store_true",
        default=argparse.SUPPRESS,
        help="CPU: predict with int8 weights and per-token int8 activations (torchao; head and "
        "instruct runs over a full-precision base): 1.1-2x faster than float32 on the CPUs "
        "measured, but slower than bf16 where --dtype auto picks it (0.79x on a Zen 4); "
        "probabilities change slightly (see BENCHMARKS.md)",
    )


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML file of options; flags override it")


def option_values(args: argparse.Namespace) -> dict[str, Any]:
    """``--config`` file values overridden by the flags actually given."""
    values = read_yaml(args.config) if getattr(args, "config", None) else {}
    values.pop("llmclf_version", None)  # a run's own config.yaml says which version wrote it
    given = {k: v for k, v in vars(args).items() if k not in ("func", "config", "command")}
    return {**values, **given}


def data_overrides(values: dict) -> dict:
    """The data options given on the command line (or in --config)."""
    names = field_names(DataConfig)
    return {k: v for k, v in values.items() if k in names}


def runtime_overrides(values: dict) -> dict:
    """The options given that a loaded run takes anew."""
    names = overridable_names()
    return {k: v for k, v in values.items() if k in names}


def refuse_unknown(values: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise LlmclfError(f"{', '.join(flag(u) for u in unknown)} does not apply to {where}")


# ---------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------


def add_train_parser(commands) -> None:
    train = commands.add_parser(
        "train", help="train a classifier and evaluate it on the test split", allow_abbrev=False
    )
    methods = _registry().method_classes()
    train.add_argument(
        "--method",
        default=argparse.SUPPRESS,
        help=f"{' | '.join(methods)} (default: head); encoder and the distill "
        "student use their own defaults for unset options: --model minilm-l6, --learning-rate "
        "1e-4, --head-learning-rate 1e-3, --epochs 5, --batch-size 16",
    )
    train.add_argument("--output", default=argparse.SUPPRESS, help="the new run folder (required)")
    add_config_option(train)
    added: set[str] = set()
    for cls in [DataConfig, *_registry().section_classes()]:  # a shared option is one flag
        fresh = tuple(f.name for f in dataclasses.fields(cls) if f.name not in added)
        add_options(train, cls, only=fresh)
        added.update(fresh)
    train.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from llmclf.runs.train import train_run

    values = option_values(args)
    method = values.pop("method", "head")
    output = values.pop("output", None)
    if not output:
        raise LlmclfError("train needs --output RUN (a new folder for the run)")
    config_class = _registry().method_class(method).config_class
    method_options = config_class.option_names()
    refuse_unknown(values, method_options | field_names(DataConfig), f"--method {method}")
    data_config = build(DataConfig, values)
    options = {k: v for k, v in values.items() if k in method_options}
    metrics = train_run(method, options, data_config, output)
    if metrics is not None:  # None: a process other than the main one of a multi-process run
        print_summary(metrics, output)
    return 0


def add_evaluate_parser(commands) -> None:
    from llmclf.methods.instruct.model import InstructConfig

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a run on a data split; writes metrics.json", allow_abbrev=False
    )
    evaluate.add_argument(
        "run", nargs="?", default=None, help="a run folder written by `llmclf train`"
    )
    evaluate.add_argument(
        "--zero-shot",
        action="store_true",
        default=argparse.SUPPRESS,
        help="evaluate the untrained --model answering the instruct prompts instead of a RUN "
        "(writes a run folder to --output, default runs/zero-shot-MODEL-DATA-MODE)",
    )
    evaluate.add_argument(
        "--method", default=argparse.SUPPRESS, help="with --zero-shot: instruct (the default)"
    )
    evaluate.add_argument(
        "--split",
        default=argparse.SUPPRESS,
        help="train, validation, test or all (default: test, or all of a file given with "
        "--data that has no split column; a split named here is cut from such a file "
        "80/10/10 as in training)",
    )
    evaluate.add_argument(
        "--output", default=argparse.SUPPRESS, help="folder for metrics.json (default RUN/eval)"
    )
    add_config_option(evaluate)
    add_options(evaluate, DataConfig, only=EVALUATION_DATA_OPTIONS)
    add_options(
        evaluate,
        ModelConfig,
        only=("model", "quantize", "max_length", "device", "dtype", "trust_remote_code"),
    )
    add_options(evaluate, TrainConfig, only=("eval_batch_size",))
    add_options(evaluate, InstructConfig)
    add_int8_option(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from llmclf.runs.evaluate import evaluate_run

    values = option_values(args)
    if values.pop("zero_shot", False):
        return cmd_zero_shot(values)
    if values.get("run") is None:
        raise LlmclfError("evaluate needs a RUN folder (or --zero-shot --model M --data D)")
    fixed = [k for k in values if k == "method" or k in zero_shot_only_names()]
    if fixed:
        flags = ", ".join(flag(k) for k in fixed)
        raise LlmclfError(f"{flags} only apply with --zero-shot: a trained run keeps its own")
    run = Path(values.pop("run"))
    folder = Path(values.get("output") or run / "eval")
    metrics, _ = evaluate_run(
        run,
        data_overrides(values),
        split=values.get("split"),
        output=folder,
        int8=values.get("int8", False),
        **runtime_overrides(values),
    )
    print_summary(metrics, folder)
    return 0


def cmd_zero_shot(values: dict[str, Any]) -> int:
    """``evaluate --zero-shot``: the untrained model answering the prompts on one split."""
    from llmclf.runs.train import zero_shot_run

    if values.pop("run", None) is not None:
        raise LlmclfError("--zero-shot evaluates an untrained --model: give no RUN folder")
    if values.pop("int8", False):
        raise LlmclfError("--int8 applies to trained runs; --zero-shot runs in the model's dtype")
    method = values.pop("method", "instruct")
    config_class = _registry().method_class(method).config_class
    split = values.pop("split", "test")
    output = values.pop("output", None)
    data_config = build(DataConfig, values)
    options = {k: v for k, v in values.items() if k in config_class.option_names()}
    mode = options.get("predict_mode", "score")
    output = output or Path("runs") / "-".join(
        ["zero-shot", _slug(options.get("model", "smollm2-135m")), _slug(data_config.data), mode]
    )
    metrics = zero_shot_run(method, options, data_config, split, output)
    print_summary(metrics, output)
    return 0


def _slug(name: str) -> str:
    """A file-name-safe short form of a model or data reference."""
    stem = Path(name).stem if Path(name).suffix else Path(name).name
    return "".join(c if c.isalnum() or c in "._" else "-" for c in stem).strip("-") or "x"


def zero_shot_only_names() -> set[str]:
    """The evaluate flags only an untrained model takes (a trained run keeps the ones it
    was trained with): what the model is and how it is prompted."""
    from llmclf.methods.instruct.model import InstructConfig

    prompting = field_names(InstructConfig) - predict_time_names(InstructConfig)
    return {"model", "quantize", "max_length"} | prompting


def add_predict_parser(commands) -> None:
    from llmclf.methods.instruct.model import InstructConfig

    predict = commands.add_parser(
        "predict", help="label the texts of a file with a trained run", allow_abbrev=False
    )
    predict.add_argument("run", help="a run folder written by `llmclf train`")
    predict.add_argument(
        "--input",
        required=True,
        help="CSV / TSV / JSONL / Parquet file of texts (with --ray: a glob or a folder)",
    )
    predict.add_argument(
        "--output",
        required=True,
        help="where to write: .csv, .jsonl, .tsv or .parquet (with --ray: a new folder)",
    )
    add_config_option(predict)
    add_options(predict, DataConfig, only=("text_column", "empty_text"))
    add_options(predict, ModelConfig, only=("device", "dtype", "trust_remote_code"))
    add_options(predict, TrainConfig, only=("eval_batch_size",))
    add_options(predict, InstructConfig, only=predict_time_names(InstructConfig))
    add_int8_option(predict)
    predict.add_argument(
        "--chunk-rows",
        type=int,
        default=argparse.SUPPRESS,
        help="rows read, labelled and written at a time (default 4096): memory holds one "
        "chunk, whatever the size of the input",
    )
    ray = predict.add_argument_group(
        "Ray Data (pip install 'llmclf[ray]')",
        "--ray labels the files --input names (a glob such as 'shards/*.parquet', or a "
        "folder) on a Ray cluster and writes Parquet files into the folder --output, each "
        "row with its row_id",
    )
    ray.add_argument("--ray", action="store_true", default=argparse.SUPPRESS, help="run on Ray")
    ray.add_argument(
        "--ray-address",
        default=argparse.SUPPRESS,
        help="an existing cluster: auto on one of its nodes, or ray://head:10001 (default: RAY_ADDRESS, else a "
        "local instance)",
    )
    ray.add_argument(
        "--ray-workers",
        type=int,
        default=argparse.SUPPRESS,
        help="actors, each holding the classifier once (default 2)",
    )
    ray.add_argument(
        "--ray-cpus-per-worker", type=float, default=argparse.SUPPRESS, help="(default 1)"
    )
    ray.add_argument(
        "--ray-gpus-per-worker", type=float, default=argparse.SUPPRESS, help="(default 0)"
    )
    predict.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from llmclf.runs.predict import CHUNK_ROWS, predict_file, predict_ray

    values = option_values(args)
    if values.get("chunk_rows", 1) < 1:
        raise LlmclfError(f"--chunk-rows must be at least 1, not {values['chunk_rows']}")
    common = dict(
        text_column=values.get("text_column"),
        empty_text=values.get("empty_text", "drop"),
        int8=values.get("int8", False),
        chunk_rows=values.get("chunk_rows", CHUNK_ROWS),
        **runtime_overrides(values),
    )
    ray_options = sorted(k for k in values if k.startswith("ray_"))
    if values.get("ray"):
        rows = predict_ray(
            values["run"],
            values["input"],
            values["output"],
            workers=values.get("ray_workers", 2),
            cpus_per_worker=values.get("ray_cpus_per_worker", 1.0),
            gpus_per_worker=values.get("ray_gpus_per_worker", 0.0),
            address=values.get("ray_address"),
            **common,
        )
    elif ray_options:
        raise LlmclfError(f"--{ray_options[0].replace('_', '-')} needs --ray")
    else:
        rows = predict_file(values["run"], values["input"], values["output"], **common)
    if is_main_process():
        print(f"wrote {rows} predictions to {values['output']}")
    return 0


def add_calibrate_parser(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="fit temperature scaling on the validation split and store it in the run",
        allow_abbrev=False,
    )
    calibrate.add_argument("run", help="a run folder written by `llmclf train`")
    calibrate.add_argument(
        "--split",
        default=argparse.SUPPRESS,
        help="the split to fit on (default: validation, or all of a file given with --data "
        "that has no split column); never the test split you report",
    )
    add_config_option(calibrate)
    add_evaluation_options(calibrate)
    calibrate.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from llmclf.runs.calibrate import calibrate_run

    values = option_values(args)
    run = Path(values.pop("run"))
    stored = calibrate_run(
        run, data_overrides(values), values.get("split"), **runtime_overrides(values)
    )
    before, after = stored["before"], stored["after"]
    print(
        f"temperature {stored['temperature']:.3f} (fitted on {stored['fitted_on']}, n={stored['n']})"
    )
    print(
        f"{stored['fitted_on']}: NLL {before['nll']:.4f} -> {after['nll']:.4f}  "
        f"ECE {before['ece']:.4f} -> {after['ece']:.4f}  Brier {before['brier']:.4f} -> {after['brier']:.4f}"
    )
    if "test" in stored:
        test_before, test_after = (
            stored["test"]["before"],
            stored["test"]["after"] or stored["test"]["before"],
        )
        print(
            f"stored test predictions: ECE {test_before['ece']:.4f} -> {test_after['ece']:.4f}  "
            f"Brier {test_before['brier']:.4f} -> {test_after['brier']:.4f}"
        )
    print(f"written to {run / 'calibration.json'}; evaluate, predict and compare now apply it")
    return 0


def add_compare_parser(commands) -> None:
    compare = commands.add_parser(
        "compare",
        help="compare runs on one test set: McNemar, bootstrap delta-F1, calibration, cost; "
        "writes report.html / .md / .json",
        description="Without --data, the test predictions each run stored when it was trained "
        "are compared (the runs must share a test set); with --data D, every run is first "
        "evaluated on D's test split. See docs/evaluation.md.",
        allow_abbrev=False,
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders")
    compare.add_argument("--output", required=True, help="the report folder")
    compare.add_argument(
        "--resamples",
        type=int,
        default=argparse.SUPPRESS,
        help="paired-bootstrap resamples, at least 2000 (default: 10000)",
    )
    compare.add_argument(
        "--seed", type=int, default=argparse.SUPPRESS, help="bootstrap seed (default: 0)"
    )
    compare.add_argument(
        "--confidence",
        type=float,
        default=argparse.SUPPRESS,
        help="confidence level of the intervals; 1 - it is the significance level (default: 0.95)",
    )
    compare.add_argument(
        "--split",
        default=argparse.SUPPRESS,
        help="with --data: the split to evaluate every run on, train, validation, test or "
        "all (default: test, or all of a file without a split column)",
    )
    add_config_option(compare)
    add_evaluation_options(compare)
    compare.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from llmclf.runs.compare import compare_runs

    values = option_values(args)
    data_values = data_overrides(values)
    if data_values and "data" not in data_values:
        raise LlmclfError("column options need --data: compare evaluates the runs on that data set")
    if "split" in values and not data_values:
        raise LlmclfError(
            "--split needs --data: without it the runs' stored test predictions are compared"
        )
    report = compare_runs(
        values["runs"],
        values["output"],
        data_values=data_values or None,
        runtime=runtime_overrides(values),
        resamples=values.get("resamples", 10_000),
        seed=values.get("seed", 0),
        confidence=values.get("confidence", 0.95),
        split=values.get("split"),
    )
    print_report_summary(report, Path(values["output"]))
    return 0


def print_report_summary(report: dict, folder: Path) -> None:
    from llmclf.evaluation.tables import summary_lines

    primary = report["primary_metric"]
    for run in report["runs"]:
        calibration = run["calibration"]
        after = calibration["after"]
        ece = f"ECE {calibration['before']['ece']:.4f}" + (
            f" -> {after['ece']:.4f} (T={calibration['temperature']:.2f})" if after else ""
        )
        print(f"{run['name']}: {primary.replace('_f1', '-F1')} {run[primary]:.4f}  {ece}")
    for pair in report["pairs"]:
        print(
            f"{pair['b']} - {pair['a']}: McNemar p={pair['mcnemar_p']:.4g}  "
            f"delta macro-F1 {pair['delta_macro_f1']:+.4f} [{pair['ci_low']:+.4f}, {pair['ci_high']:+.4f}]  "
            f"delta micro-F1 {pair['delta_micro_f1']:+.4f} [{pair['micro_ci_low']:+.4f}, {pair['micro_ci_high']:+.4f}]"
        )
    print(summary_lines(report)[0])
    print(f"written to {folder / 'report.html'} (and report.md, report.json)")


def add_experiment_parser(commands) -> None:
    experiment = commands.add_parser(
        "experiment",
        help="train a grid of runs (methods x models x seeds x options), resumably, then compare",
        allow_abbrev=False,
    )
    experiment.add_argument("grid", help="the grid file (see examples/grid-bbc-news.yaml)")
    experiment.add_argument(
        "--output", default=None, help="the grid's folder (default: the file's `output`)"
    )
    experiment.add_argument(
        "--dry-run", action="store_true", help="list the cells and their state; train nothing"
    )
    experiment.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from llmclf.runs.grid import run_grid

    run_grid(args.grid, output=args.output, dry_run=args.dry_run)
    return 0


def add_distill_parser(commands) -> None:
    from llmclf.methods.distill import DistillConfig
    from llmclf.methods.encoder import EncoderConfig

    distill = commands.add_parser(
        "distill",
        help="train a fast encoder student on a trained run's outputs and compare the two",
        description="Train an encoder student on TEACHER_RUN's temperature-softened outputs "
        "plus the gold labels, then compare the two on the test split (F1 and examples/s). "
        "Unset options take the encoder defaults (--learning-rate 1e-4, --head-learning-rate "
        "1e-3, --epochs 5, --batch-size 16); --max-length defaults to the teacher's; without "
        "--data the teacher's data options are used.",
        allow_abbrev=False,
    )
    distill.add_argument("teacher", metavar="TEACHER_RUN", help="a finished run folder")
    distill.add_argument(
        "--student",
        default=argparse.SUPPRESS,
        help="the student encoder: a built-in name, hub id or folder (default: minilm-l6)",
    )
    distill.add_argument(
        "--output", default=argparse.SUPPRESS, help="the new run folder (required)"
    )
    add_config_option(distill)
    add_options(distill, DistillConfig)
    add_options(distill, DataConfig)
    add_options(
        distill,
        ModelConfig,
        only=("max_length", "dtype", "device", "gradient_checkpointing", "trust_remote_code"),
    )
    add_options(distill, TrainConfig, only=field_names(TrainConfig) - {"validation_fraction"})
    add_options(distill, EncoderConfig)
    distill.set_defaults(func=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> int:
    from llmclf.methods.distill import DistillConfig
    from llmclf.methods.encoder import EncoderClassifier
    from llmclf.run_folder import RunFolder
    from llmclf.runs.distill import distill_run

    values = option_values(args)
    teacher = Path(values.pop("teacher"))
    output = values.pop("output", None)
    if not output:
        raise LlmclfError("distill needs --output RUN (a new folder for the student)")
    if "student" in values:
        values["model"] = values.pop("student")
    student_options = EncoderClassifier.config_class.option_names()
    refuse_unknown(values, student_options | field_names(DataConfig, DistillConfig), "distill")
    data_values = data_overrides(values)
    if "data" not in data_values:  # the teacher's own data, read the way it was read
        stored = RunFolder(teacher).data_values()
        if "data" not in stored:
            raise LlmclfError(f"{teacher} does not say what data it was trained on: give --data")
        data_values = {**stored, **data_values}
    metrics = distill_run(
        teacher,
        {k: v for k, v in values.items() if k in student_options},
        build(DataConfig, data_values),
        build(DistillConfig, values),
        output,
    )
    print_summary(metrics, output)
    if "f1_ratio" in metrics:
        print(
            f"teacher macro-F1 {metrics['teacher_macro_f1']:.4f} at "
            f"{metrics['teacher_examples_per_s']:.1f} ex/s; student {metrics['student_macro_f1']:.4f} "
            f"at {metrics['student_examples_per_s']:.1f} ex/s: {metrics['f1_ratio']:.1%} of the "
            f"F1 at {metrics['throughput_ratio']:.1f}x the throughput"
        )
    return 0


def add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export",
        help="export a run: an encoder to ONNX, or a head / encoder run to a plain merged "
        "transformers folder (for vLLM, TEI, pipeline)",
        allow_abbrev=False,
    )
    export.add_argument("run", help="a finished run folder")
    export.add_argument(
        "--format",
        choices=("onnx", "merged"),
        default="onnx",
        help="onnx: an encoder run for ONNX Runtime; merged: LoRA merged into the base, a "
        "plain *ForSequenceClassification folder (default: onnx)",
    )
    export.add_argument("--output", help="the folder to write (default: RUN/onnx or RUN/merged)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18)")
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from llmclf.runs.export import export_merged, export_onnx

    if args.format == "merged":
        info = export_merged(args.run, args.output)
        parity = info["parity"]
        print(
            f"wrote {info['folder']}: plain transformers matches llmclf on {parity['texts']} "
            f"texts (max |logit difference| {parity['max_abs_logit_diff']:.1g})"
        )
        return 0
    info = export_onnx(args.run, args.output, opset=args.opset)
    parity = info["parity"]
    size = Path(info["folder"], "model.onnx").stat().st_size / 2**20
    print(
        f"wrote {info['folder']} (model.onnx, {size:.1f} MiB); ONNX Runtime matches PyTorch on "
        f"{parity['texts']} texts: same predictions, max |logit difference| "
        f"{parity['max_abs_logit_diff']:.1g}"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from llmclf.catalog import MODELS

    print(f"{'name':<16} {'kind':<8} {'licence':<22} description / install")
    for entry in MODELS.values():
        print(f"{entry.name:<16} {entry.kind:<8} {entry.licence:<22} {entry.description}")
        print(f"{'':<48} {entry.install}")
    print(
        "\nAlso accepted: any Hugging Face hub id, a local model folder, or a path to a .gguf file."
    )
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from llmclf.catalog import DATASETS

    for entry in DATASETS.values():
        print(
            f"{entry.name}\n  {entry.description}\n  split: {entry.split}\n  licence: {entry.licence}"
        )
        print(f"  install: {entry.install}")
    print("\nAlso accepted: a CSV / TSV / JSONL / Parquet file, or hf:NAME[:CONFIG].")
    return 0


def print_summary(metrics: dict, folder: Path | str) -> None:
    for warning in metrics.get("warnings", []):
        print(f"warning: {warning}")
    if "macro_f1" in metrics:
        line = (
            f"{metrics.get('split', 'test')}: accuracy {metrics['accuracy']:.4f}  "
            f"macro-F1 {metrics['macro_f1']:.4f}  micro-F1 {metrics['micro_f1']:.4f}  (n={metrics['n']})"
        )
        if "samples_f1" in metrics:
            line += (
                f"  samples-F1 {metrics['samples_f1']:.4f}  hamming {metrics['hamming_loss']:.4f}"
            )
        print(line)
    if "unparsed" in metrics:
        print(
            f"unparsed answers {metrics['unparsed']} ({metrics['unparsed_rate']:.1%}): "
            "counted as wrong"
        )
    if "ece" in metrics:
        line = f"calibration: ECE {metrics['ece']:.4f}  Brier {metrics['brier']:.4f}"
        if "ece_uncalibrated" in metrics:
            line += (
                f"  at temperature {metrics['temperature']:.3f} "
                f"(uncalibrated: ECE {metrics['ece_uncalibrated']:.4f}  "
                f"Brier {metrics['brier_uncalibrated']:.4f})"
            )
        print(line)
    if "trainable_params" in metrics:
        print(
            f"trainable parameters {metrics['trainable_params']:,} of {metrics['total_params']:,}; "
            f"training {metrics['train_seconds']:.0f} s; peak memory {metrics['peak_rss_mb']:.0f} MiB"
        )
    print(f"written to {folder}")


def add_list_parsers(commands) -> None:
    models = commands.add_parser("models", help="list the built-in offline models")
    models.set_defaults(func=cmd_models)
    datasets = commands.add_parser("datasets", help="list the built-in offline data sets")
    datasets.set_defaults(func=cmd_datasets)


# ---------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------


def add_serve_parser(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve trained runs over HTTP: vLLM's /v1/classify, TEI's /predict, a page at /",
        allow_abbrev=False,
    )
    serve.add_argument("runs", nargs="+", metavar="RUN", help="run folders to serve")
    serve.add_argument(
        "--name",
        action="append",
        default=None,
        help="the name a run is served under (repeat, in the runs' order; default: the "
        "run folder's name)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes "
        "it to every network the machine is on, so set --api-key)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--max-batch-size", type=int, default=32, help="texts per model batch (default 32)"
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a batch waits for more requests (default 5 ms)",
    )
    serve.add_argument(
        "--max-texts-per-request", type=int, default=64, help="more is a 413 (default 64)"
    )
    serve.add_argument(
        "--max-chars-per-text",
        type=int,
        default=100_000,
        help="longer is a 413 (default 100000; texts are cut at the run's max length anyway)",
    )
    serve.add_argument(
        "--api-key",
        default=os.environ.get("LLMCLF_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every endpoint but /health (default: "
        "$LLMCLF_API_KEY; none: open)",
    )
    serve.add_argument(
        "--shape-multiple",
        type=int,
        default=32,
        help="pad each batch to a width that is a multiple of this and to a row count from "
        "a short list, so memory stays flat (default 32; 0: exact shapes)",
    )
    serve.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each batch shape once before the port opens (default: on)",
    )
    add_options(serve, ModelConfig, only=("device", "dtype", "trust_remote_code"))
    add_options(serve, TrainConfig, only=("eval_batch_size",))
    add_int8_option(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from llmclf.serve import serve

    values = vars(args)
    overrides = runtime_overrides({k: v for k, v in values.items() if v is not None})
    serve(
        values["runs"],
        host=values["host"],
        port=values["port"],
        names=values["name"],
        max_batch_size=values["max_batch_size"],
        max_wait_ms=values["max_wait_ms"],
        max_texts_per_request=values["max_texts_per_request"],
        max_chars_per_text=values["max_chars_per_text"],
        api_key=values["api_key"] or None,
        shape_multiple=values["shape_multiple"],
        warm_up=values["warm_up"],
        int8=values.get("int8", False),
        **overrides,
    )
    return 0


SUBCOMMANDS = (
    add_train_parser,
    add_evaluate_parser,
    add_predict_parser,
    add_calibrate_parser,
    add_compare_parser,
    add_experiment_parser,
    add_distill_parser,
    add_export_parser,
    add_serve_parser,
    add_list_parsers,
)


def build_parser() -> argparse.ArgumentParser:
    from llmclf._version import __version__

    parser = argparse.ArgumentParser(
        prog="llmclf",
        description="Turn decoder-only LLMs into text classifiers, and find out which way is best.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"llmclf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def setup_logging() -> None:
    # one handler on this call's stderr: a second main() in the same process (tests, a
    # notebook) neither repeats every line nor writes to a stream closed since
    for old in list(log.handlers):
        log.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    log.addHandler(handler)
    if is_main_process():
        handler.setFormatter(logging.Formatter("llmclf: %(message)s"))
        log.setLevel(logging.INFO)
    else:  # the other processes of torchrun / accelerate launch: their warnings are the
        # main process's (the same data and options), so only errors
        handler.setFormatter(logging.Formatter(f"llmclf [rank {rank()}]: %(message)s"))
        log.setLevel(logging.ERROR)
    log.propagate = False
    # Library deprecation chatter (transformers <-> peft) says nothing to an llmclf user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return args.func(args)
    except LlmclfError as exc:
        print(f"llmclf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "llmclf: interrupted (a run continues from its last checkpoint with --resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
