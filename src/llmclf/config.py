"""Options: small dataclasses, one per concern, and a method's config made of them.

Every field documents itself in ``metadata``: ``help`` (the flag's help text), and what a
value may be (``choices``, ``bound``, ``check``). The CLI turns each field into a
``--flag`` (underscores become dashes), ``--config run.yaml`` may set any of them, and the
Python API takes them as keyword arguments; all three go through ``validate`` (types,
choices, bounds) when a method's config is resolved, before any data or model is loaded.

A field marked ``runtime`` says how a run executes, never what it learns (device, batch
size for prediction, resuming): it is no part of a run's identity and a loaded run takes a
new value. A field marked ``predict_time`` is part of the identity but may also change when
a trained run is loaded (how an instruct run predicts). Every consumer reads these marks
(``runtime_names``, ``predict_time_names``) rather than keeping its own list.

    ModelConfig.max_length            one section (a dataclass, one concern)
    HeadClassifierConfig.model        a method's config: one field per section
    clf.config_.model.max_length      resolved once, in ``fit`` / ``load``
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from llmclf.errors import LlmclfError

REQUIRED = dataclasses.MISSING  # option(REQUIRED, ...): a value the command cannot do without
POSITIVE = (">", 0)
NON_NEGATIVE = (">=", 0)
FRACTION = ("[0,1)", None)


def option(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple | None = None,
    bound: tuple | None = None,
    check: Callable[[str, Any], None] | None = None,
    runtime: bool = False,
    predict_time: bool = False,
    repeat: bool = False,
    short: str | None = None,
):
    """A dataclass field carrying its CLI help text and what values it takes.

    ``bound`` is ``POSITIVE`` (> 0), ``NON_NEGATIVE`` (≥ 0) or ``FRACTION`` ([0, 1));
    ``check(flag, value)`` raises ``LlmclfError`` for a bad value. ``repeat``: a list
    option given as ``--name a --name b`` rather than ``--name a b``. ``short``: a
    one-letter spelling besides ``--name`` (``-n``).
    """
    metadata = {
        "help": help,
        "choices": choices,
        "bound": bound,
        "check": check,
        "runtime": runtime,
        "predict_time": predict_time,
        "repeat": repeat,
        "short": short,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    if default is REQUIRED:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def same_as(cls: type, name: str, default: Any = dataclasses.MISSING, help: str | None = None):
    """The option ``name`` of the section ``cls`` again, for another options class: its
    type rules, help and default are written once, where the section declares them
    (``default`` / ``help`` change them for this use only).

    Example:
        >>> @dataclass
        ... class Example:
        ...     device: str = same_as(ModelConfig, "device")
        >>> Example().device
        'auto'
    """
    source = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if source is None:
        raise TypeError(f"{cls.__name__} has no option {name}")
    metadata = dict(source.metadata)
    if help is not None:
        metadata["help"] = help
    if default is dataclasses.MISSING:
        if source.default_factory is not dataclasses.MISSING:
            return field(default_factory=source.default_factory, metadata=metadata)
        default = source.default
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def flag(name: str) -> str:
    """The CLI spelling of an option: ``lora_r`` -> ``--lora-r`` (a name from a YAML key
    is shown on one line, whatever it holds)."""
    return "--" + " ".join(str(name).split()).replace("_", "-")


def check_threshold(name: str, threshold: str) -> None:
    """--threshold is 'tuned' or a probability strictly between 0 and 1."""
    if threshold == "tuned":
        return
    try:
        value = float(threshold)
    except ValueError:
        raise LlmclfError(f"{flag(name)} must be 'tuned' or a number, not {threshold!r}") from None
    if not 0 < value < 1:
        raise LlmclfError(f"{flag(name)} must be between 0 and 1, not {value}")


# Options several methods share, defined once (each method's section includes them).


def threshold_option():
    return option(
        "tuned",
        "multi-label decision threshold: 'tuned' per label on the validation split, or a number such as 0.5",
        check=check_threshold,
    )


def class_weights_option():
    return option(
        "none",
        "balanced = weight the loss by inverse class frequency",
        choices=("none", "balanced"),
    )


def seed_option():
    return option(42, "seed of every random choice in training")


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """``value`` as the field's type, or a one-line error (a YAML ``epochs: two``)."""
    kinds = [k.strip() for k in str(f.type).split("|")]
    name = flag(f.name)
    if value is None:
        if "None" in kinds:
            return None
        raise LlmclfError(f"{name} needs a value")
    base = kinds[0]
    if base == "bool":
        if not isinstance(value, bool):
            raise LlmclfError(f"{name} must be true or false, not {value!r}")
        return value
    if base in ("int", "float"):
        if isinstance(value, str) and base == "float":  # YAML reads 1e-3 as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, float) and base == "int" and value.is_integer():
            value = int(value)
        wanted = int if base == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            kind = "a whole number" if base == "int" else "a number"
            raise LlmclfError(f"{name} must be {kind}, not {value!r}")
        return float(value) if base == "float" else value
    if base.startswith("list"):
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise LlmclfError(f"{name} must be one or more names, not {value!r}")
        return list(values)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a YAML `threshold: 0.5`
    if not isinstance(value, str):
        raise LlmclfError(f"{name} must be a string, not {value!r}")
    return value


def _check_bound(name: str, value: Any, bound: tuple) -> None:
    kind, limit = bound
    if kind == ">" and not value > limit:
        raise LlmclfError(f"{flag(name)} must be > {limit}, not {value}")
    if kind == ">=" and not value >= limit:
        raise LlmclfError(f"{flag(name)} must be ≥ {limit}, not {value}")
    if kind == "[0,1)" and not 0 <= value < 1:
        raise LlmclfError(f"{flag(name)} must be in [0, 1), not {value}")


def check_value(f: dataclasses.Field, value: Any) -> Any:
    """One option's value coerced to its field's type and checked (choices, bounds, the
    field's own check); a one-line ``LlmclfError`` if it does not fit."""
    value = _coerce(f, value)
    meta = f.metadata
    if value is None:
        return value
    if meta.get("choices") and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        raise LlmclfError(f"{flag(f.name)} must be one of {allowed}, not {value!r}")
    if meta.get("bound"):
        _check_bound(f.name, value, meta["bound"])
    if meta.get("check"):
        meta["check"](f.name, value)
    return value


def validate(obj: Any) -> None:
    """Coerce and check every field of a section from its metadata (called by
    ``__post_init__``): type, allowed choices, bounds, the field's own check."""
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, check_value(f, getattr(obj, f.name)))


# ---------------------------------------------------------------------------------------
# The sections every method draws on
# ---------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the examples come from and how to read them."""

    data: str = option(
        "bbc-news",
        "a built-in data set (see `llmclf datasets`), a CSV / TSV / JSONL / Parquet file, "
        "or hf:NAME[:CONFIG] for the `datasets` library",
    )
    text_column: list[str] = option(
        ["text"],
        "column(s) holding the text; several are joined with a blank line (e.g. title abstract)",
    )
    label_column: str = option("label", "column holding the label(s)")
    label_sep: str | None = option(
        None,
        "multi-label: labels in one string separated by this (e.g. '|'); JSON lists are read as they are",
    )
    train_limit: int | None = option(
        None, "train on a stratified sample of this many examples", bound=POSITIVE
    )
    validation_limit: int | None = option(
        None,
        "select epochs, tune thresholds and calibrate on a stratified sample of this many "
        "validation examples (the same sample whenever the run's data is read again)",
        bound=POSITIVE,
    )
    test_limit: int | None = option(
        None,
        "test on a stratified sample of this many test examples (the same sample whenever "
        "the run's data is read again: evaluate, calibrate, compare); a large test split "
        "(20newsgroups: 7,528) costs more than a small training budget",
        bound=POSITIVE,
    )
    empty_text: str = option(
        "drop",
        "rows with an empty or missing text: drop them with a warning, or stop with an error",
        choices=("drop", "error"),
        runtime=True,
    )
    split_seed: int = option(
        0, "seed of the stratified 80/10/10 split of a file that has no 'split' column"
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class ModelConfig:
    """Which causal LM to load and how."""

    model: str = option(
        "smollm2-135m",
        "a built-in model (see `llmclf models`), a Hugging Face hub id, a local model folder or a .gguf file",
    )
    quantize: str = option(
        "none",
        "load the frozen base in 4-bit NF4 with double quantization (QLoRA)",
        choices=("none", "4bit"),
    )
    dtype: str = option(
        "auto",
        "compute dtype; auto = bfloat16 on CUDA GPUs that support it (else float16), on a CPU "
        "whichever of bfloat16 and float32 a short probe measures faster (cached per machine), "
        "float32 on Apple MPS",
        choices=("auto", "float32", "bfloat16", "float16"),
        runtime=True,
    )
    device: str = option(
        "auto",
        "where to run: auto picks CUDA when present, else Apple MPS, else the CPU",
        choices=("auto", "cpu", "cuda", "mps"),
        runtime=True,
    )
    max_length: int = option(
        256, "truncate texts to this many tokens (the appended EOS included)", bound=POSITIVE
    )
    gradient_checkpointing: bool = option(
        False, "trade compute for memory during training", runtime=True
    )
    tune_malloc: bool = option(
        True,
        "on a CPU with glibc: keep freed memory in the process (mallopt: 32 MiB mmap "
        "threshold, 1 GiB trim threshold) instead of faulting it in again every batch; "
        "applied once per process and recorded in metrics.json (placement); MALLOC_* / "
        "GLIBC_TUNABLES of your own take precedence",
        runtime=True,
    )
    trust_remote_code: bool = option(
        False,
        "run the Python code a model folder or hub repository ships (an auto_map in its "
        "config.json); only for models you trust. Never taken from a run's config.yaml",
        runtime=True,
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.max_length < 2:
            raise LlmclfError("--max-length must be at least 2")


@dataclass
class AdapterConfig:
    """The LoRA adapters trained on the frozen base."""

    lora: str = option(
        "on",
        "none = frozen-feature mode: pooled features computed once and cached, only the head trains",
        choices=("on", "none"),
    )
    lora_r: int = option(16, "LoRA rank", bound=POSITIVE)
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = alpha / r)", bound=POSITIVE)
    lora_dropout: float = option(
        0.0,
        "dropout on the LoRA input (0: none, the fastest; PEFT copies the input per layer)",
        bound=FRACTION,
    )
    target_modules: list[str] = option(
        ["all-linear"],
        "module names to adapt; all-linear = every linear layer of the decoder blocks",
    )
    lora_layers: int | None = option(
        None,
        "adapt only the last K decoder blocks: the backward pass stops below them, so training "
        "is faster and keeps fewer activations (none: every block)",
        bound=POSITIVE,
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.lora == "none" and self.lora_layers is not None:
            raise LlmclfError("--lora-layers chooses where LoRA goes: it needs --lora on")


@dataclass
class TrainConfig:
    """The optimisation loop (run by the transformers Trainer)."""

    epochs: float = option(3.0, "passes over the training data", bound=POSITIVE)
    batch_size: int = option(8, "examples per step and device", bound=POSITIVE)
    grad_accum: int = option(
        1, "gradient accumulation steps (effective batch = batch_size × this)", bound=POSITIVE
    )
    compile: bool = option(
        False,
        "torch.compile each decoder block (the LoRA inside) for training: fuses the "
        "element-wise work around the matmuls; costs a compilation of about 20 s on a "
        "2-core CPU, so it pays on runs of more than a few minutes (see docs/training.md)",
    )
    batch_tokens: int | None = option(
        None,
        "token-budget batches: each training step holds as many texts of similar length as "
        "fit N padded tokens (rows × longest row) instead of --batch-size texts, so short "
        "texts fill the CPU's matrix units; the learning rates scale by the square root of "
        "the mean texts per step over --batch-size (one process; see docs/training.md)",
        bound=POSITIVE,
    )
    learning_rate: float = option(
        1e-3,
        "peak learning rate of the LoRA adapters (tuned on small models; try 2e-4 for 1B+ models)",
        bound=POSITIVE,
    )
    head_learning_rate: float | None = option(
        1e-2,
        "peak learning rate of the freshly initialised head (none: the LoRA rate)",
        bound=POSITIVE,
    )
    weight_decay: float = option(0.0, "AdamW weight decay", bound=NON_NEGATIVE)
    warmup_ratio: float = option(
        0.1, "fraction of the steps spent warming the learning rate up", bound=FRACTION
    )
    lr_scheduler: str = option(
        "linear", "learning-rate schedule after warm-up", choices=("linear", "cosine", "constant")
    )
    eval_batch_size: int = option(
        16,
        "examples per forward pass when evaluating and predicting",
        bound=POSITIVE,
        runtime=True,
    )
    batch_invariant: bool = option(
        False,
        "one text, one answer: every text runs alone, padded to a width that depends on its "
        "own length only, so its probabilities are the same whatever else is in the batch, "
        "the batch size, the input order or the server (slower; see docs/evaluation.md)",
        runtime=True,
    )
    save_steps: int | None = option(
        None,
        "evaluate and checkpoint every N steps instead of every epoch (long epochs)",
        bound=POSITIVE,
    )
    early_stopping_patience: int = option(
        2,
        "stop after this many evaluations without improvement (0: never stop early)",
        bound=NON_NEGATIVE,
    )
    seed: int = seed_option()
    resume: bool = option(
        False, "continue from the last checkpoint in the output folder", runtime=True
    )
    keep_checkpoints: bool = option(
        False, "keep the Trainer checkpoints after a successful run", runtime=True
    )
    report_to: str = option(
        "none",
        "send the losses and validation metrics to a tracker as they come (the Trainer's "
        "own integrations): tensorboard writes RUN/logs/tensorboard; mlflow and wandb "
        "follow their own environment (MLFLOW_TRACKING_URI, WANDB_PROJECT, WANDB_MODE, ...)",
        choices=("none", "tensorboard", "mlflow", "wandb"),
        runtime=True,
    )
    validation_fraction: float = option(
        0.1,
        "Python API without eval_set: hold out this fraction of the training data for model "
        "selection and thresholds (0: none)",
        bound=FRACTION,
    )

    def __post_init__(self) -> None:
        validate(self)


def check_probability(name: str, value: float) -> None:
    """A probability strictly between 0 and 1."""
    if not 0 < value < 1:
        raise LlmclfError(f"{flag(name)} must be between 0 and 1 (exclusive), not {value}")


def check_share(name: str, value: float) -> None:
    """A share of the texts: more than 0, at most 1."""
    if not 0 < value <= 1:
        raise LlmclfError(f"{flag(name)} must be more than 0 and at most 1, not {value}")


def check_precision_bound(bound: str, target_precision: float | None) -> None:
    """--precision-bound judges --target-precision's threshold: alone it means nothing."""
    if bound != "estimate" and target_precision is None:
        raise LlmclfError(
            f"--precision-bound {bound} judges the threshold --target-precision chooses: "
            "give --target-precision too"
        )


@dataclass
class AbstainConfig:
    """Selective prediction (every method): when a run answers and when it abstains.

    At most one of the three is given. ``abstain_below`` is the threshold itself;
    ``target_precision`` / ``target_coverage`` choose it on the validation split after
    training (``llmclf calibrate`` chooses it again at the new temperature);
    ``precision_bound`` says how ``target_precision`` judges a threshold. An abstained
    answer is an empty ``prediction`` with ``abstained: true`` (docs/evaluation.md)."""

    abstain_below: float | None = option(
        None,
        "abstain (empty prediction, abstained: true) when the answer's probability is below "
        "this; multi-label: per label, on the probability of the decided outcome",
        check=check_probability,
    )
    target_precision: float | None = option(
        None,
        "choose --abstain-below on the validation split: the lowest threshold whose answers "
        "there are at least this often right (the most coverage that reaches it)",
        check=check_probability,
    )
    target_coverage: float | None = option(
        None,
        "choose --abstain-below on the validation split so that the run answers this share "
        "of texts (e.g. 0.8) and abstains on the least confident rest",
        check=check_share,
    )
    precision_bound: str = option(
        "estimate",
        "how --target-precision judges a threshold on the validation split: estimate = the "
        "share right there; lower = the lower end of its 95 percent Clopper-Pearson interval "
        "(less coverage, but a target that holds on new texts also when validation is small)",
        choices=("estimate", "lower"),
    )

    def __post_init__(self) -> None:
        validate(self)
        thresholds = ("abstain_below", "target_precision", "target_coverage")
        given = [n for n in thresholds if getattr(self, n) is not None]
        if len(given) > 1:
            raise LlmclfError(
                f"{flag(given[0])} and {flag(given[1])} both set the abstention threshold: give one"
            )
        check_precision_bound(self.precision_bound, self.target_precision)

    @property
    def target(self) -> tuple[str, float] | None:
        """``("precision" | "coverage", value)`` when the threshold is chosen on data."""
        if self.target_precision is not None:
            return "precision", self.target_precision
        if self.target_coverage is not None:
            return "coverage", self.target_coverage
        return None


@dataclass
class LabelsConfig:
    """How a run reads its classes (every method)."""

    label_hierarchy: str | None = option(
        None,
        "single-label classes are paths with this separator between parent and child (e.g. "
        "'/' for sport/football, '.' for comp.sys.mac): metrics per level, and a run that "
        "abstains still answers the parent it is sure of (parent column; docs/evaluation.md)",
    )


# ---------------------------------------------------------------------------------------
# A method's config: its sections, resolved once
# ---------------------------------------------------------------------------------------


@dataclass
class Options:
    """Base of a command's options (``PredictOptions``, ``ServeOptions``, ...): a dataclass
    of ``option()`` fields, validated on construction. Flags, ``--config`` keys and
    Python keywords all come from its fields.

    Example:
        >>> from llmclf.runs.export import ExportOptions  # doctest: +SKIP
        >>> ExportOptions.from_values({"format": "onnx", "opset": 18})  # doctest: +SKIP
    """

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def names(cls) -> set[str]:
        return field_names(cls)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], where: str | None = None):
        """The options from ``{name: value}`` (flags, YAML or keywords), validated; a name
        this command does not have is refused in one line."""
        unknown = sorted(set(values) - cls.names())
        if unknown:
            shown = ", ".join(flag(u) for u in unknown)
            raise LlmclfError(
                f"{shown} does not apply to {where or cls.__name__} "
                f"(its options: {', '.join(flag(n) for n in sorted(cls.names()))})"
            )
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise LlmclfError(f"{where or cls.__name__} needs {flag(missing[0])}")
        return cls(**values)

    @classmethod
    def partition(cls, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``values`` parted into this class's options and the rest."""
        names = cls.names()
        return (
            {k: v for k, v in values.items() if k in names},
            {k: v for k, v in values.items() if k not in names},
        )

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


RUN_OWN = "the run's own"


@dataclass
class LoadOptions(Options):
    """How a finished run is loaded (evaluate, predict, calibrate, compare, serve); an
    option left unset keeps the run's own value."""

    device: str | None = same_as(ModelConfig, "device", default=None)
    dtype: str | None = same_as(ModelConfig, "dtype", default=None)
    trust_remote_code: bool = same_as(ModelConfig, "trust_remote_code")
    eval_batch_size: int | None = same_as(TrainConfig, "eval_batch_size", default=None)
    batch_invariant: bool | None = same_as(TrainConfig, "batch_invariant", default=None)
    tune_malloc: bool | None = same_as(ModelConfig, "tune_malloc", default=None)

    def overrides(self) -> dict[str, Any]:
        """The options a loaded run takes anew: those set (``int8`` apart)."""
        out = {k: v for k, v in self.as_dict().items() if v is not None and k != "int8"}
        if not self.trust_remote_code:
            out.pop("trust_remote_code")
        return out


@dataclass
class PredictLoadOptions(LoadOptions):
    """How a finished run is loaded to predict (evaluate, predict, serve)."""

    int8: bool = option(
        False,
        "CPU: predict with int8 weights and per-token int8 activations (torchao; head and "
        "instruct runs over a full-precision base): 1.1-2x faster than float32 on the CPUs "
        "measured, but slower than bf16 where --dtype auto picks it (0.79x on a Zen 4); "
        "probabilities change slightly (see BENCHMARKS.md)",
    )
    abstain_below: float | None = same_as(
        AbstainConfig,
        "abstain_below",
        default=None,
        help="abstain (empty prediction, abstained: true) when the answer's probability is "
        "below this, instead of the run's own threshold (labels.json); multi-label: per "
        "label, on the probability of the decided outcome",
    )
    label_hierarchy: str | None = same_as(
        LabelsConfig,
        "label_hierarchy",
        help="read the run's classes as paths with this separator (e.g. '/'), instead of "
        "the run's own: metrics per level and parent answers where it abstains",
    )


def section(cls: type):
    """A method config's field holding one section, built from its defaults."""
    return field(default_factory=cls)


# the sections MethodConfig gives every method, after the method's own
SHARED_SECTIONS = ("labels", "abstain")


@dataclass
class MethodConfig:
    """Base of a method's resolved options: one field per section (``model``, ``train``,
    ...), each a section dataclass. The section names are those of config.yaml.

    Example:
        >>> from llmclf.methods.head import HeadClassifierConfig
        >>> HeadClassifierConfig.from_options({"pooling": "mean"}).head.pooling
        'mean'
    """

    # values for options the user did not set, where a method differs from the sections'
    defaults: ClassVar[dict[str, Any]] = {}

    # every method's: how its runs read their classes, and when they abstain (last in
    # config.yaml)
    labels: LabelsConfig = section(LabelsConfig)
    abstain: AbstainConfig = section(AbstainConfig)

    @classmethod
    def sections(cls) -> dict[str, type]:
        fields = dataclasses.fields(cls)
        shared = [f for f in fields if f.name in SHARED_SECTIONS]
        return {
            f.name: f.default_factory for f in [*(f for f in fields if f not in shared), *shared]
        }

    @classmethod
    def option_fields(cls) -> dict[str, dataclasses.Field]:
        """Every option of the method, by name, across its sections."""
        out: dict[str, dataclasses.Field] = {}
        for section_class in cls.sections().values():
            for f in dataclasses.fields(section_class):
                out.setdefault(f.name, f)
        return out

    @classmethod
    def option_names(cls) -> set[str]:
        return set(cls.option_fields())

    @classmethod
    def from_options(cls, options: Mapping[str, Any]):
        """The config from flat ``{option: value}`` (flags, YAML or keyword arguments),
        validated; options not set take ``defaults``, then the sections' defaults."""
        unknown = sorted(set(options) - cls.option_names())
        if unknown:
            raise LlmclfError(
                f"no option {', '.join(unknown)} (options: {', '.join(sorted(cls.option_names()))})"
            )
        values = {**cls.defaults, **options}
        return cls(**{name: build(sc, values) for name, sc in cls.sections().items()})

    def as_options(self) -> dict[str, Any]:
        """The flat ``{option: value}`` form (what ``from_options`` takes)."""
        out: dict[str, Any] = {}
        for name in self.sections():
            for key, value in dataclasses.asdict(getattr(self, name)).items():
                out.setdefault(key, value)
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Sections for the run's resolved ``config.yaml``."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in self.sections()}


def _marked(classes: Iterable[type], mark: str) -> set[str]:
    return {
        f.name
        for cls in classes
        for f in (
            cls.option_fields().values()
            if issubclass(cls, MethodConfig)
            else dataclasses.fields(cls)
        )
        if f.metadata.get(mark)
    }


def runtime_names(*classes: type) -> set[str]:
    """Options of these sections / method configs marked ``runtime``."""
    return _marked(classes, "runtime")


def predict_time_names(*classes: type) -> set[str]:
    """Options of these sections / method configs marked ``predict_time``."""
    return _marked(classes, "predict_time")


def field_names(*classes: type) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """Accept both flat and sectioned YAML (``lora: {lora_r: 8}``) and dashed keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value))
        else:
            flat[str(key).replace("-", "_")] = value
    return flat


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a ``--config`` file into a flat {option: value} dict."""
    path = Path(path)
    if not path.is_file():
        raise LlmclfError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LlmclfError(
            f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(values, dict):
        raise LlmclfError(f"config file {path} must hold a mapping of option: value")
    return flatten(values)


def build(cls: type, values: Mapping[str, Any]):
    """Make ``cls`` from the subset of ``values`` that are its fields."""
    names = field_names(cls)
    return cls(**{k: v for k, v in values.items() if k in names})
