"""Small dataclasses, one per concern, shared by the CLI, YAML files and the Python API.

Every field documents itself in ``metadata["help"]``; the CLI turns each field into a
``--flag`` (underscores become dashes) and ``--config run.yaml`` may set any of them.
Values are checked in ``__post_init__`` so a bad value fails before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmclf.errors import LlmclfError


def option(default: Any = None, help: str = "", choices: tuple | None = None, **kwargs):
    """A dataclass field carrying its CLI help text (and allowed values)."""
    if isinstance(default, list):
        return field(
            default_factory=lambda: list(default), metadata={"help": help, "choices": choices}
        )
    return field(default=default, metadata={"help": help, "choices": choices, **kwargs})


def _check_choice(obj: Any, name: str) -> None:
    meta = {f.name: f.metadata for f in dataclasses.fields(obj)}[name]
    value = getattr(obj, name)
    if meta.get("choices") and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        raise LlmclfError(f"--{name.replace('_', '-')} must be one of {allowed}, not {value!r}")


def _check_choices(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        _check_choice(obj, f.name)


def _check_positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            bound = "≥ 0" if allow_zero else "> 0"
            raise LlmclfError(f"--{name.replace('_', '-')} must be {bound}, not {value}")


def check_threshold(threshold: str) -> None:
    """--threshold is 'tuned' or a probability strictly between 0 and 1."""
    if threshold == "tuned":
        return
    try:
        value = float(threshold)
    except ValueError:
        raise LlmclfError(f"--threshold must be 'tuned' or a number, not {threshold!r}") from None
    if not 0 < value < 1:
        raise LlmclfError(f"--threshold must be between 0 and 1, not {value}")


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
    train_limit: int | None = option(None, "train on a stratified sample of this many examples")
    empty_text: str = option(
        "drop",
        "rows with an empty or missing text: drop them with a warning, or stop with an error",
        choices=("drop", "error"),
    )
    split_seed: int = option(
        0, "seed of the stratified 80/10/10 split of a file that has no 'split' column"
    )

    def __post_init__(self) -> None:
        if isinstance(self.text_column, str):
            self.text_column = [self.text_column]
        _check_choices(self)
        _check_positive(self, "train_limit")


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
        "compute dtype; auto = bfloat16 on GPUs and CPUs that support it natively, else float32",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    device: str = option(
        "auto", "where to run: auto picks CUDA when present", choices=("auto", "cpu", "cuda")
    )
    max_length: int = option(256, "truncate texts to this many tokens (the appended EOS included)")
    gradient_checkpointing: bool = option(False, "trade compute for memory during training")

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "max_length")
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
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = option(
        0.0, "dropout on the LoRA input (0: none, the fastest; PEFT copies the input per layer)"
    )
    target_modules: list[str] = option(
        ["all-linear"],
        "module names to adapt; all-linear = every linear layer of the decoder blocks",
    )
    lora_layers: int | None = option(
        None,
        "adapt only the last K decoder blocks: the backward pass stops below them, so training "
        "is faster and keeps fewer activations (none: every block)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        _check_positive(self, "lora_r", "lora_alpha", "lora_layers")
        if self.lora == "none" and self.lora_layers is not None:
            raise LlmclfError("--lora-layers chooses where LoRA goes: it needs --lora on")
        if not 0 <= self.lora_dropout < 1:
            raise LlmclfError(f"--lora-dropout must be in [0, 1), not {self.lora_dropout}")


@dataclass
class TrainConfig:
    """The optimisation loop (run by the transformers Trainer)."""

    epochs: float = option(3.0, "passes over the training data")
    batch_size: int = option(8, "examples per step and device")
    grad_accum: int = option(1, "gradient accumulation steps (effective batch = batch_size × this)")
    learning_rate: float = option(
        1e-3,
        "peak learning rate of the LoRA adapters (tuned on small models; try 2e-4 for 1B+ models)",
    )
    head_learning_rate: float | None = option(
        1e-2, "peak learning rate of the freshly initialised head (none: the LoRA rate)"
    )
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.1, "fraction of the steps spent warming the learning rate up")
    lr_scheduler: str = option(
        "linear", "learning-rate schedule after warm-up", choices=("linear", "cosine", "constant")
    )
    eval_batch_size: int = option(16, "examples per forward pass when evaluating and predicting")
    save_steps: int | None = option(
        None, "evaluate and checkpoint every N steps instead of every epoch (long epochs)"
    )
    early_stopping_patience: int = option(
        2, "stop after this many evaluations without improvement (0: never stop early)"
    )
    seed: int = option(42, "seed of every random choice in training")
    resume: bool = option(False, "continue from the last checkpoint in the output folder")
    keep_checkpoints: bool = option(False, "keep the Trainer checkpoints after a successful run")
    validation_fraction: float = option(
        0.1,
        "Python API without eval_set: hold out this fraction of the training data for model "
        "selection and thresholds (0: none)",
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(
            self,
            "epochs",
            "batch_size",
            "grad_accum",
            "learning_rate",
            "eval_batch_size",
            "head_learning_rate",
            "save_steps",
        )
        _check_positive(self, "weight_decay", "early_stopping_patience", allow_zero=True)
        if not 0 <= self.validation_fraction < 1:
            raise LlmclfError(
                f"validation_fraction must be in [0, 1), not {self.validation_fraction}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise LlmclfError(f"--warmup-ratio must be in [0, 1), not {self.warmup_ratio}")


@dataclass
class HeadConfig:
    """Approach 1: a linear head on a pooled hidden state."""

    pooling: str = option(
        "last",
        "last = hidden state of the final real token (an EOS is appended); mean = mean over real tokens",
        choices=("last", "mean"),
    )
    class_weights: str = option(
        "none",
        "balanced = weight the loss by inverse class frequency",
        choices=("none", "balanced"),
    )
    num_layers: int | None = option(
        None, "keep only the first K decoder blocks and pool from block K (less compute)"
    )
    threshold: str = option(
        "tuned",
        "multi-label decision threshold: 'tuned' per label on the validation split, or a number such as 0.5",
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "num_layers")
        check_threshold(self.threshold)


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


def build(cls: type, values: dict[str, Any]):
    """Make ``cls`` from the subset of ``values`` that are its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def to_dict(*configs: Any) -> dict[str, dict[str, Any]]:
    """Sections for the run's resolved ``config.yaml``."""
    return {type(c).__name__.removesuffix("Config").lower(): dataclasses.asdict(c) for c in configs}


@dataclass
class InstructConfig:
    """Approach 2: the model answers a prompt with the label words (see docs/instruct.md)."""

    prompt_template: str | None = option(
        None,
        "a text file holding the prompt, with {text} (the text) and {labels} (the allowed "
        "answers) fields; default: a built-in instruction",
    )
    chat_template: str = option(
        "auto",
        "wrap the prompt in the tokenizer's chat template: auto = when it has one; "
        "off = llmclf's plain 'prompt / Answer: label' format",
        choices=("auto", "on", "off"),
    )
    verbalizer: str = option(
        "names",
        "the words each label is answered with: names (the label strings), letters (A, B, ...), "
        "numbers (1, 2, ...), or a JSON / YAML file mapping each label to its words",
    )
    predict_mode: str = option(
        "score",
        "score = log-likelihood of every label's answer, one prompt pass, with probabilities; "
        "generate = greedy decoding, then parsing the answer (the paper's way)",
        choices=("score", "generate"),
    )
    score_normalization: str = option(
        "sum",
        "score mode: sum = log-probability of the whole answer (softmax = the model's "
        "probability restricted to the labels); mean = per-token average (no length bias)",
        choices=("sum", "mean"),
    )
    max_new_tokens: int | None = option(
        None, "generate mode: answer length limit in tokens (none: the longest answer + 16)"
    )
    share_prompt_prefix: bool = option(
        True,
        "run the tokens every prompt starts with (system turn, instructions, label list) once "
        "per training batch and once per scoring call instead of once per text; the same "
        "numbers, less compute",
    )
    multi_label_beam: int = option(
        8,
        "multi-label score mode: per-label probabilities come from this many most probable "
        "label sets (a beam search over the answer)",
    )
    threshold: str = option(
        "tuned",
        "multi-label decision threshold: 'tuned' per label on the validation split, or a number such as 0.5",
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "max_new_tokens", "multi_label_beam")
        check_threshold(self.threshold)
