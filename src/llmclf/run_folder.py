"""The run folder: every file name llmclf writes, how each is read and written, and the
one atomic-write helper they all use.

    RUN/
      adapter_config.json, adapter_model.safetensors   the PEFT adapter (LoRA + head)
      head.safetensors     --lora none runs: the head alone
      instruct.json        instruct runs: prompt template, verbalizer, answer budget
      pipeline.skops       tfidf runs: the scikit-learn pipeline
      tokenizer.json, tokenizer_config.json, ...       the tokenizer, preprocessing included
      labels.json          the label schema (classes, multi-label, thresholds)
      calibration.json     the softmax / sigmoid temperature (1.0 until calibrated)
      config.yaml          the full resolved config, data options included
      train_log.json       the Trainer's log history
      metrics.json         test-split metrics + parameter / time / memory accounting
      test_predictions.jsonl
      checkpoints/         Trainer checkpoints while training (removed when it ends)
      eval/                what ``llmclf evaluate`` writes by default

A finished run's files are written to ``RUN/.staging`` and moved in place at the end,
with ``metrics.json`` last: a folder with a ``metrics.json`` is a finished run. Every other
file is written beside its target as ``.NAME.partial`` and renamed over it
(``atomic_path``), so a crash leaves the old file or none, never half of one.

This module sits beside ``labels.py`` rather than under ``runs/``: a classifier's own
``save`` / ``load`` (``methods/``) write and read these files too, and ``methods/`` never
imports ``runs/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from llmclf.errors import LlmclfError

log = logging.getLogger("llmclf")

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.json"
CALIBRATION_FILE = "calibration.json"
TEST_PREDICTIONS = "test_predictions.jsonl"
PREDICTIONS = "predictions.jsonl"  # evaluate / zero-shot on another split
TRAIN_LOG = "train_log.json"
CHECKPOINTS = "checkpoints"
TRACKER_LOGS = "logs"  # --report-to tensorboard: logs/tensorboard
STAGING = ".staging"
EVAL_FOLDER = "eval"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
MODEL_WEIGHTS = "model.safetensors"  # encoder runs: the whole model (transformers' name)
INSTRUCT_STATE = "instruct.json"
PIPELINE_FILE = "pipeline.skops"
TEACHER_CACHE = "teacher_logits"  # distill: the teacher's logits, reused on --resume
# ``llmclf export``: RUN/onnx/
ONNX_FOLDER = "onnx"
ONNX_GRAPHS = "onnx"  # the graphs' folder inside it (transformers.js's layout)
ONNX_FILE = "model.onnx"  # exports before the graphs' folder: the graph at the top
EXPORT_INFO = "llmclf_export.json"
# ``llmclf compare``: report.json moved in last, so a folder with one holds a complete report
REPORT_JSON = "report.json"
EVALUATIONS = "evaluations"
# ``llmclf experiment``
CELLS_FILE = "cells.json"
GRID_REPORT = "report"


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block
    ends normally, removed when it raises.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_path(target) as partial:
        ...     _ = partial.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield partial
        partial.replace(path)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_json(path: str | Path, values: Any) -> None:
    write_text(path, json.dumps(values, indent=2, ensure_ascii=False, default=str) + "\n")


def write_yaml(path: str | Path, values: dict) -> None:
    write_text(path, yaml.safe_dump(values, sort_keys=False, allow_unicode=True))


def write_predictions(frame, path: str | Path) -> None:
    """A prediction table (pandas) as JSON lines; probabilities keep 15 decimals so that
    re-scaling them to another temperature (calibration) stays exact."""
    with atomic_path(path) as partial:
        frame.to_json(partial, orient="records", lines=True, force_ascii=False, double_precision=15)


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise LlmclfError(f"{path.parent} holds no {path.name}: is it a finished llmclf run?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LlmclfError(f"{path} is not valid JSON ({exc.msg}): the {what} is damaged") from None


def replace_contents(staging: Path, target: Path, last: str | None = None) -> None:
    """Move every entry of ``staging`` into ``target`` (replacing same-named ones), the
    entry named ``last`` after all others (the mark of a complete folder), then remove
    ``staging``."""
    entries = sorted(staging.iterdir(), key=lambda p: p.name == last)
    for path in entries:
        destination = target / path.name
        if destination.is_dir():
            shutil.rmtree(destination)
        path.replace(destination)
    staging.rmdir()


# ---------------------------------------------------------------------------------------
# Integrity: checked before any model loads
# ---------------------------------------------------------------------------------------


def damaged(folder: Path, name: str, what: str) -> LlmclfError:
    return LlmclfError(
        f"{folder} is damaged: {name} {what}; train it again or restore the folder from a copy"
    )


def check_present(folder: Path, *names: str) -> None:
    for name in names:
        if not (folder / name).is_file():
            raise damaged(folder, name, "is missing")


def check_json_file(folder: Path, name: str) -> Any:
    """The parsed content of a JSON file the run needs."""
    check_present(folder, name)
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise damaged(folder, name, f"is not valid JSON ({type(exc).__name__})") from None


def check_tokenizer(folder: Path) -> None:
    """The tokenizer a run saved: its config, and tokenizer.json when there is one."""
    check_json_file(folder, "tokenizer_config.json")
    if (folder / "tokenizer.json").is_file():
        check_json_file(folder, "tokenizer.json")


def check_safetensors(folder: Path, name: str, rows: dict[str, int] | None = None) -> None:
    """A readable safetensors file (header, and data of the size the header says) whose
    tensors named ``*KEY`` have ``rows[KEY]`` rows (the head's label count)."""
    shapes = tensor_shapes(folder, name)
    for suffix, expected in (rows or {}).items():
        found = [key for key in shapes if key == suffix or key.endswith("." + suffix)]
        if not found:
            raise damaged(folder, name, f"holds no {suffix} tensor")
        for key in found:
            if not shapes[key] or shapes[key][0] != expected:
                raise damaged(
                    folder,
                    name,
                    f"has {key} of shape {shapes[key]}, but {LABELS_FILE} names {expected} classes",
                )


def tensor_shapes(folder: Path, name: str) -> dict[str, list[int]]:
    """The name and shape of every tensor of a run's safetensors file (its header only)."""
    from safetensors import SafetensorError, safe_open

    check_present(folder, name)
    try:
        with safe_open(str(folder / name), "pt") as tensors:
            return {key: list(tensors.get_slice(key).get_shape()) for key in tensors.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise damaged(
            folder, name, f"is truncated or not valid ({first or type(exc).__name__})"
        ) from exc


def check_tensors(
    folder: Path, name: str, found: dict[str, list[int]], expected: dict[str, list[int]]
) -> None:
    """A weights file loaded strictly: every tensor the model needs from it is there, in
    the model's shape, and the file holds no tensor the model has no place for; otherwise
    the run is damaged, and the message names the tensors.

    Example:
        >>> check_tensors(Path("run"), "head.safetensors", {}, {"score.weight": [3, 64]})
        Traceback (most recent call last):
        llmclf.errors.LlmclfError: run is damaged: head.safetensors lacks score.weight; train it
        again or restore the folder from a copy
    """
    refuse_weights(
        folder,
        name,
        missing=set(expected) - set(found),
        unexpected=set(found) - set(expected),
        misshapen=[
            f"{key} {list(found[key])} (the model's: {list(expected[key])})"
            for key in set(found) & set(expected)
            if list(found[key]) != list(expected[key])
        ],
    )


def refuse_weights(
    folder: Path,
    name: str,
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
    misshapen: Iterable[str] = (),
) -> None:
    """Damage, named, when a weights file lacks tensors the model needs, holds tensors it
    has no place for, or holds tensors of another shape (each described)."""
    problems = []
    for what, names in (
        ("lacks", missing),
        ("holds tensors the model has no place for:", unexpected),
        ("has tensors of another shape:", misshapen),
    ):
        names = sorted(names)
        if names:
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            problems.append(f"{what} {', '.join(names[:5])}{more}")
    if problems:
        raise damaged(folder, name, "; ".join(problems))


def check_zip(folder: Path, name: str) -> None:
    """A zip archive (skops) whose every member reads back with the right checksum."""
    import zipfile

    check_present(folder, name)
    try:
        with zipfile.ZipFile(folder / name) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        raise damaged(folder, name, "is truncated or not a zip archive") from None
    if bad is not None:
        raise damaged(folder, name, f"has a corrupt member ({bad})")


# ---------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------


class RunFolder:
    """One run folder: what it holds and its state (new, unfinished, finished)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def finished(self) -> bool:
        return (self.path / METRICS_FILE).is_file()

    @property
    def unfinished(self) -> bool:
        """Checkpoints but no model yet: a killed ``train`` to continue with --resume."""
        saved = self.finished or (self.path / LABELS_FILE).is_file()
        return not saved and (self.path / CHECKPOINTS).is_dir()

    def check_new(self, resume: bool) -> None:
        """Refuse to overwrite a finished run or an unrelated non-empty folder."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise LlmclfError(f"--output {self.path} is a file, not a folder")
        if self.finished:
            raise LlmclfError(
                f"{self.path} already holds a finished run: choose another --output or delete it"
            )
        if not resume and self.last_checkpoint() is not None:
            raise LlmclfError(
                f"{self.path} holds checkpoints of an unfinished run: pass --resume to continue "
                "it, or choose another --output"
            )
        others = [
            p.name
            for p in self.path.iterdir()
            if p.name not in (CHECKPOINTS, STAGING, TRACKER_LOGS)
        ]
        if others and not resume:
            raise LlmclfError(
                f"--output {self.path} is not empty ({', '.join(sorted(others)[:5])}): "
                "choose a new folder"
            )

    def last_checkpoint(self, processes: int = 1) -> str | None:
        """The newest Trainer checkpoint that was written completely; one cut short by a
        kill is skipped. The main process writes trainer_state.json last of its files, but
        with ``processes`` > 1 every other process writes its own RNG state
        (rng_state_RANK.pth) without waiting for it: a checkpoint is complete once all
        are there (resumed without one, that process draws other random numbers)."""
        folder = self.path / CHECKPOINTS
        if not folder.is_dir():
            return None

        def complete_(checkpoint: Path) -> bool:
            if not (checkpoint / "trainer_state.json").is_file():
                return False
            return processes == 1 or all(
                (checkpoint / f"rng_state_{rank}.pth").is_file() for rank in range(processes)
            )

        checkpoints = [p for p in folder.glob("checkpoint-*") if p.is_dir()]
        complete = [p for p in checkpoints if complete_(p)]
        partial = [p.name for p in checkpoints if p not in complete]
        if partial:
            log.warning("skipping incomplete checkpoint(s): %s", ", ".join(partial))
        if not complete:
            return None
        return str(max(complete, key=lambda p: int(p.name.rsplit("-", 1)[-1])))

    def config(self) -> dict[str, Any]:
        """The run's resolved config.yaml (sections, data options included)."""
        path = self.path / CONFIG_FILE
        if self.path.is_file():
            raise LlmclfError(
                f"{self.path} is a file, not a run folder: give the folder `llmclf train` wrote "
                "(a data file goes after --data)"
            )
        if not self.path.is_dir():
            raise LlmclfError(f"{self.path} does not exist")
        if not path.is_file():
            raise LlmclfError(
                f"{self.path} holds no {CONFIG_FILE}: it is not a finished llmclf run"
            )
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            raise LlmclfError(f"{path} is not valid YAML: the run folder is damaged") from None
        if not isinstance(values, dict):
            raise LlmclfError(f"{path} holds no mapping: the run folder is damaged")
        return values

    def data_values(self) -> dict[str, Any]:
        """The data options the run was trained with (columns, separator): the ``data``
        section of its config.yaml."""
        section = self.config().get("data") or {}
        return {str(k).replace("-", "_"): v for k, v in section.items()}

    def metrics(self) -> dict[str, Any]:
        return read_json(self.path / METRICS_FILE, "run's metrics")

    def calibration(self) -> dict[str, Any]:
        """calibration.json ({} when the run has none: temperature 1)."""
        path = self.path / CALIBRATION_FILE
        return read_json(path, "calibration") if path.is_file() else {}

    def temperature(self) -> float:
        return float(self.calibration().get("temperature", 1.0))


def write_calibration(folder: str | Path, calibration: dict[str, Any]) -> None:
    """calibration.json: the temperature and, once calibrated, how it was fitted."""
    write_json(Path(folder) / CALIBRATION_FILE, calibration)
