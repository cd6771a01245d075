"""The ``llmclf`` command: a table of commands, each one library function and its options.

Every command is a row of ``commands()``: the function that does the work (``runs.predict.
predict``, ``serve.serve``, ...), its options classes (``PredictOptions``, ``LoadOptions``,
...: dataclasses of ``config.option()`` fields), which of their options are positional,
and, where registered methods add options of their own (``train``'s sections, an instruct
run's ``predict_mode``), where those come from. One shared path turns all of it into
flags, reads ``--config run.yaml`` (flags override it), refuses an option the command
does not have, validates every value before any data or model loads, calls the function
and prints what it returned (``summary.py``). A user mistake prints one
``llmclf: error: ...`` line and exits with status 2.

To add a command: an options class beside its function, a ``show_*`` in summary.py, and
a row here.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmclf import summary
from llmclf.config import (
    REQUIRED,
    DataConfig,
    LoadOptions,
    Options,
    PredictLoadOptions,
    check_value,
    flag,
    option,
    read_yaml,
)
from llmclf.distributed import is_main_process, rank
from llmclf.errors import LlmclfError

log = logging.getLogger("llmclf")

Fields = dict[str, dataclasses.Field]


@dataclass
class ServedRuns(Options):
    """The runs ``llmclf serve`` serves."""

    runs: list[str] = option(REQUIRED, "run folders to serve")


# ---------------------------------------------------------------------------------------
# Options that registered methods contribute (read from their declarations)
# ---------------------------------------------------------------------------------------


def _registry():
    from llmclf.methods import registry

    return registry


def train_fields() -> Fields:
    return _registry().section_fields(DataConfig)


def predict_time_fields() -> Fields:
    return _registry().predict_time_fields()


def evaluate_fields() -> Fields:
    return {**_registry().zero_shot_fields(), **_registry().predict_time_fields()}


def distill_fields() -> Fields:
    """The data options and the encoder student's (its model is --student)."""
    from llmclf.methods.encoder import EncoderClassifier

    fields = EncoderClassifier.config_class.option_fields()
    skip = ("model", "quantize", "validation_fraction")
    return {
        **{f.name: f for f in dataclasses.fields(DataConfig)},
        **{k: f for k, f in fields.items() if k not in skip},
    }


def no_fields() -> Fields:
    return {}


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One ``llmclf`` subcommand: ``run(*options, **more)`` does the work, where
    ``options`` are instances of ``options`` (in that order) and ``more`` the values of
    ``more_options``; ``show(result, values)`` prints its result."""

    name: str
    help: str
    run: Callable[..., Any]
    options: tuple[type[Options], ...] = ()
    positionals: tuple[str, ...] = ()
    more_options: Callable[[], Fields] = no_fields
    show: Callable[[Any, dict], None] = summary.show_nothing
    description: str | None = None


def _serve(target: ServedRuns, options, load: PredictLoadOptions) -> None:
    from llmclf.serve import serve

    serve(target.runs, options, overrides={**load.overrides(), "int8": load.int8})


def _encoder_defaults() -> str:
    from llmclf.methods.encoder import ENCODER_DEFAULTS

    return ", ".join(f"{flag(k)} {v}" for k, v in ENCODER_DEFAULTS.items())


def _setfit_defaults() -> str:
    from llmclf.methods.setfit import SETFIT_DEFAULTS, SetFitConfig

    section = SetFitConfig()
    own = {k: getattr(section, k) for k in ("epochs", "batch_size", "learning_rate")}
    return ", ".join(f"{flag(k)} {v}" for k, v in {**SETFIT_DEFAULTS, **own}.items())


def commands() -> list[Command]:
    """The table: every subcommand, in the order ``llmclf --help`` lists them."""
    from llmclf import runs
    from llmclf.methods.distill import DistillConfig
    from llmclf.serve.app import ServeOptions

    return [
        Command(
            "train",
            "train a classifier and evaluate it on the test split",
            runs.train.train,
            (runs.train.TrainOptions,),
            more_options=train_fields,
            show=summary.show_train,
            description=f"Train a classifier (--method: {' | '.join(_registry().METHODS)}). "
            "Each method takes its own options; an option not set takes the method's "
            f"default (encoder and the distill student: {_encoder_defaults()}; setfit: "
            f"{_setfit_defaults()}).",
        ),
        Command(
            "evaluate",
            "evaluate a run on a data split; writes metrics.json",
            runs.zero_shot.evaluate,
            (runs.evaluate.EvaluateOptions, runs.evaluate.EvaluationData, PredictLoadOptions),
            positionals=("run",),
            more_options=evaluate_fields,
            show=summary.show_evaluate,
        ),
        Command(
            "predict",
            "label the texts of a file with a trained run",
            runs.predict.predict,
            (runs.predict.PredictOptions, PredictLoadOptions),
            positionals=("run",),
            more_options=predict_time_fields,
            show=summary.show_predict,
        ),
        Command(
            "suggest",
            "rank unlabelled texts by uncertainty and diversity: which to label next",
            runs.suggest.suggest,
            (runs.suggest.SuggestOptions, PredictLoadOptions),
            positionals=("run",),
            show=summary.show_suggest,
        ),
        Command(
            "calibrate",
            "fit temperature scaling on the validation split and store it in the run",
            runs.calibrate.calibrate,
            (runs.calibrate.CalibrateOptions, runs.evaluate.EvaluationData, LoadOptions),
            positionals=("run",),
            show=summary.show_calibrate,
        ),
        Command(
            "compare",
            "compare runs on one test set: McNemar, bootstrap delta-F1, calibration, cost; "
            "writes report.html / .md / .json",
            runs.compare.compare,
            (runs.compare.CompareOptions, runs.evaluate.EvaluationData, LoadOptions),
            positionals=("runs",),
            show=summary.show_compare,
            description="Without --data, the test predictions each run stored when it was "
            "trained are compared (the runs must share a test set); with --data D, every run "
            "is first evaluated on D's test split. See docs/evaluation.md.",
        ),
        Command(
            "experiment",
            "train a grid of runs (methods x models x seeds x options), resumably, then compare",
            runs.grid.experiment,
            (runs.grid.ExperimentOptions,),
            positionals=("grid",),
        ),
        Command(
            "distill",
            "train a fast encoder student on a trained run's outputs and compare the two",
            runs.distill.distill,
            (runs.distill.DistillOptions, DistillConfig),
            positionals=("teacher",),
            more_options=distill_fields,
            show=summary.show_distill,
            description="Train an encoder student on TEACHER's temperature-softened outputs "
            "plus the gold labels, then compare the two on the test split (F1 and examples/s). "
            f"Options not set take the encoder's defaults ({_encoder_defaults()}); "
            "--max-length defaults to the teacher's; without --data the teacher's data "
            "options are used.",
        ),
        Command(
            "export",
            "export a run for another runtime (see --format)",
            runs.export.export,
            (runs.export.ExportOptions,),
            positionals=("run",),
            show=summary.show_export,
        ),
        Command(
            "serve",
            "serve trained runs over HTTP: vLLM's /v1/classify, TEI's /predict, a page at /",
            _serve,
            (ServedRuns, ServeOptions, PredictLoadOptions),
            positionals=("runs",),
        ),
        Command("models", "list the built-in offline models", summary.show_models),
        Command("datasets", "list the built-in offline data sets", summary.show_datasets),
    ]


# ---------------------------------------------------------------------------------------
# One shared path: flags, --config, unknown options, validation
# ---------------------------------------------------------------------------------------


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def add_flag(group, f: dataclasses.Field, positional: bool = False) -> None:
    """One argument for an option field: ``--lora-r`` (or a positional), typed from the
    annotation; values not given stay unset (the options class holds the defaults)."""
    annotation = str(f.type).replace(" ", "")
    base = annotation.split("|")[0]
    default = _default_of(f)
    if default is dataclasses.MISSING:
        shown = " (required)"
    elif default is None or default is False:
        shown = ""
    else:
        shown = f" (default: {' '.join(default) if isinstance(default, list) else default})"
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f.metadata["help"] + shown}
    if base == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif base.startswith("list"):
        if f.metadata.get("repeat"):
            kwargs["action"] = "append"
        else:
            kwargs["nargs"] = "+"
    else:
        kwargs["type"] = {"int": int, "float": float}.get(base, str)
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
    if positional:
        if default is not dataclasses.MISSING and "nargs" not in kwargs:
            kwargs["nargs"] = "?"
        group.add_argument(f.name, metavar=f.name.upper(), **kwargs)
    else:
        short = [f.metadata["short"]] if f.metadata.get("short") else []
        group.add_argument(flag(f.name), *short, dest=f.name, **kwargs)


def add_command(subparsers, command: Command) -> None:
    parser = subparsers.add_parser(
        command.name,
        help=command.help,
        description=command.description or command.help,
        allow_abbrev=False,
    )
    if not command.options:
        parser.set_defaults(command=command)
        return
    parser.add_argument("--config", help="a YAML file of options; flags override it")
    added: set[str] = {"config"}
    for cls in command.options:
        title = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        group = parser.add_argument_group(title.replace("``", "").rstrip("."))
        for f in dataclasses.fields(cls):
            if f.name not in added:
                add_flag(group, f, positional=f.name in command.positionals)
                added.add(f.name)
    more = command.more_options()
    if more:
        group = parser.add_argument_group("options of the methods")
        for name, f in more.items():
            if name not in added:
                add_flag(group, f)
                added.add(name)
    parser.set_defaults(command=command)


def option_values(args: argparse.Namespace) -> dict[str, Any]:
    """``--config`` file values overridden by the flags actually given."""
    values = read_yaml(args.config) if getattr(args, "config", None) else {}
    values.pop("llmclf_version", None)  # a run's own config.yaml says which version wrote it
    given = {k: v for k, v in vars(args).items() if k not in ("command", "command_name", "config")}
    return {**values, **given}


def run_command(command: Command, values: dict[str, Any]) -> Any:
    """Split ``values`` among the command's options classes (each validated), check the
    rest against the options the methods contribute, and run the command."""
    instances = []
    rest = dict(values)
    for cls in command.options:
        own, rest = cls.partition(rest)
        instances.append(cls.from_values(own, f"llmclf {command.name}"))
    more = command.more_options()
    unknown = sorted(set(rest) - set(more))
    if unknown:
        raise LlmclfError(
            f"{', '.join(flag(u) for u in unknown)} does not apply to llmclf {command.name} "
            f"(see llmclf {command.name} --help)"
        )
    checked = {name: check_value(more[name], value) for name, value in rest.items()}
    return command.run(*instances, **checked)


# ---------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse's own mistakes in llmclf's one form: ``llmclf: error: ...``, status 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"llmclf: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from llmclf._version import __version__

    parser = Parser(
        prog="llmclf",
        description="Turn decoder-only LLMs into text classifiers, and find out which way is best.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"llmclf {__version__}")
    subparsers = parser.add_subparsers(
        dest="command_name", metavar="COMMAND", required=True, parser_class=Parser
    )
    for command in commands():
        add_command(subparsers, command)
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
    args = build_parser().parse_args(argv)
    setup_logging()
    command: Command = args.command
    try:
        if not command.options:
            command.run()
            return 0
        values = option_values(args)
        command.show(run_command(command, values), values)
        return 0
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
