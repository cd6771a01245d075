"""Experiment grids: ``llmclf experiment grid.yaml``.

A grid trains one ordinary run folder per cell of methods x models x seeds x options on
one data set, then writes the comparison report of every finished cell::

    output: runs/grid-bbc-news      # the grid's folder (--output overrides it)
    data: bbc-news                  # one data set; data options go in `options`
    models: [smollm2-135m]          # every method is tried with every model ...
    seeds: [42]                     # ... and every seed
    options:                        # options of every cell (train flags, underscores)
      train_limit: 400
      epochs: 2
    methods:                        # method -> its own options; a list is an axis
      head:
        pooling: [last, mean]
      instruct:
        predict_mode: score

Cells are named after what varies (``head-smollm2-135m-pooling=mean-seed42``). The grid
is resumable: a cell whose folder holds metrics.json is finished and skipped, an
unfinished one continues from its last checkpoint. Every cell is checked before the first
one trains, so a typo fails in a second, not after an hour.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmclf.backbone import check_model_ref
from llmclf.config import (
    REQUIRED,
    DataConfig,
    Options,
    build,
    field_names,
    flatten,
    option,
    runtime_names,
)
from llmclf.errors import LlmclfError
from llmclf.methods.registry import method_class, method_classes
from llmclf.run_folder import CELLS_FILE, GRID_REPORT, RunFolder, write_json
from llmclf.runs.compare import compare_runs
from llmclf.runs.train import train_run

log = logging.getLogger("llmclf")

GRID_KEYS = ("output", "data", "models", "seeds", "options", "methods")


@dataclass
class Cell:
    """One run of the grid."""

    name: str
    method: str
    options: dict  # the method's options (model, seed, ...)
    data_values: dict  # DataConfig options
    folder: Path

    def state(self) -> str:
        folder = RunFolder(self.folder)
        if folder.finished:
            return "finished"
        checkpoint = folder.last_checkpoint()
        return f"unfinished ({Path(checkpoint).name})" if checkpoint else "new"


# ---------------------------------------------------------------------------------------
# Reading and expanding a grid file
# ---------------------------------------------------------------------------------------


def read_grid(path: str | Path) -> dict:
    """The grid file as a dict, with its top-level keys checked."""
    path = Path(path)
    if not path.is_file():
        raise LlmclfError(f"grid file {path} does not exist")
    try:
        grid = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise LlmclfError(f"grid file {path} is not valid YAML: {first}") from None
    if not isinstance(grid, dict):
        raise LlmclfError(f"grid file {path} must hold a mapping (output, data, methods, ...)")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise LlmclfError(
            f"grid file {path}: unknown key {', '.join(unknown)} (keys: {', '.join(GRID_KEYS)})"
        )
    if not grid.get("methods"):
        raise LlmclfError(f"grid file {path} names no methods: add `methods: {{head: {{}}}}`")
    return grid


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _list_fields(cls) -> set[str]:
    """Options whose value is itself a list (target_modules): an axis is a list of lists."""
    fields = cls.config_class.option_fields().values()
    return {f.name for f in fields if str(f.type).startswith("list")}


def _axes(options: dict, list_fields: set[str]) -> tuple[dict, dict]:
    """Split options into fixed values and axes (a list of values to try)."""
    fixed, axes = {}, {}
    for key, value in options.items():
        is_axis = isinstance(value, list) and (
            key not in list_fields or all(isinstance(v, list) for v in value)
        )
        if is_axis and not value:
            raise LlmclfError(f"grid option {key} is an empty list: give at least one value")
        (axes if is_axis else fixed)[key] = value
    return fixed, axes


def _slug(value) -> str:
    if isinstance(value, list):
        value = "+".join(str(v) for v in value)
    text = str(value)
    if "/" in text or text.endswith(".gguf"):  # a path or hub id: its last part
        text = Path(text).stem if text.endswith(".gguf") else text.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def expand(grid: dict, output: Path) -> list[Cell]:
    """Every cell of the grid, validated (unknown method or option, bad value)."""
    classes = method_classes()
    methods = grid["methods"]
    if isinstance(methods, list):
        methods = {name: {} for name in methods}
    unknown = [m for m in methods if m not in classes]
    if unknown:
        raise LlmclfError(
            f"the grid names the unknown method {', '.join(repr(m) for m in unknown)} "
            f"(this llmclf has: {', '.join(classes)})"
        )
    common = flatten(grid.get("options") or {})
    data_names = field_names(DataConfig)
    data_values = {k: v for k, v in common.items() if k in data_names}
    if "data" in grid:
        data_values["data"] = grid["data"]
    common = {k: v for k, v in common.items() if k not in data_names}
    every_option = set().union(*(classes[m].config_class.option_names() for m in methods))
    stray = sorted(set(common) - every_option)
    if stray:
        raise LlmclfError(
            f"grid option {', '.join(stray)} belongs to none of the methods {', '.join(methods)}"
        )
    build(DataConfig, data_values)  # a bad data option fails here
    cells: list[Cell] = []
    for method, own in methods.items():
        cells += _method_cells(
            method, classes[method], own or {}, common, grid, data_values, output
        )
    names = [c.name for c in cells]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LlmclfError(f"the grid makes two cells named {duplicates[0]}: vary something else")
    return cells


def _method_cells(method, cls, own, common, grid, data_values, output) -> list[Cell]:
    allowed = cls.config_class.option_names()
    own = flatten(own)
    wrong = sorted(set(own) - allowed)
    if wrong:
        raise LlmclfError(
            f"grid: method {method} has no option {', '.join(wrong)} (its options: "
            f"{', '.join(sorted(allowed))})"
        )
    options = {k: v for k, v in common.items() if k in allowed}
    for key, name in (("models", "model"), ("seeds", "seed")):
        if key in grid and name in allowed:
            options[name] = _as_list(grid[key])
    options.update(own)
    fixed, axes = _axes(options, _list_fields(cls))
    cells = []
    for values in itertools.product(*axes.values()):
        chosen = {**fixed, **dict(zip(axes, values))}
        config = cls(progress=False, **chosen).resolve_config()  # bad names and values fail now
        if hasattr(config, "model"):
            check_model_ref(config.model.model)  # an unknown model too, not at its cell
        parts = [method]
        if "model" in chosen:
            parts.append(_slug(chosen["model"]))
        parts += [f"{k}={_slug(chosen[k])}" for k in axes if k not in ("model", "seed")]
        if "seed" in chosen:
            parts.append(f"seed{chosen['seed']}")
        name = "-".join(parts)
        cells.append(Cell(name, method, chosen, dict(data_values), output / name))
    return cells


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def check_finished_cell(cell: Cell) -> None:
    """A finished cell must have been trained with the options the grid gives it now."""
    stored = flatten(RunFolder(cell.folder).config())
    cls = method_class(cell.method)
    expected = cls(progress=False, **cell.options).resolve_config().as_options()
    expected.update(dataclasses.asdict(build(DataConfig, cell.data_values)))
    runtime = runtime_names(DataConfig, cls.config_class)
    if stored.get("method") != cell.method:
        raise LlmclfError(f"{cell.folder} holds a {stored.get('method')} run, not {cell.method}")
    for key in sorted(set(cell.options) | set(cell.data_values)):
        if key in runtime or key not in expected:
            continue
        if stored.get(key) != expected[key]:
            raise LlmclfError(
                f"{cell.folder} was trained with {key}={_shown(stored.get(key))!r} but the grid "
                f"now says {_shown(expected[key])!r}: delete that folder or restore the grid"
            )


def _shown(value):
    """2.0 as 2: a float option set to a whole number reads as the grid file wrote it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass
class ExperimentOptions(Options):
    """llmclf experiment: a grid of runs (methods x models x seeds x options), resumably,
    then their comparison."""

    grid: str = option(REQUIRED, "the grid file (see examples/grid-bbc-news.yaml)")
    output: str | None = option(None, "the grid's folder (default: the file's `output`)")
    dry_run: bool = option(False, "list the cells and their state; train nothing")


def experiment(options: ExperimentOptions) -> dict:
    """``llmclf experiment``: ``run_grid`` with the command's options."""
    return run_grid(options.grid, output=options.output, dry_run=options.dry_run)


def run_grid(path: str | Path, output: str | Path | None = None, dry_run: bool = False) -> dict:
    """Train every unfinished cell of the grid in ``path``, then compare the finished ones.

    Returns {"cells": {name: state}, "report": report dict or None}.
    """
    grid = read_grid(path)
    folder = Path(output or grid.get("output") or "")
    if not str(output or grid.get("output") or ""):
        raise LlmclfError(f"{path} has no `output` folder: add one or pass --output")
    cells = expand(grid, folder)
    for cell in cells:
        if cell.state() == "finished":
            check_finished_cell(cell)
    if dry_run:
        for cell in cells:
            print(f"{cell.state():<24} {cell.name}")
        return {"cells": {c.name: c.state() for c in cells}, "report": None}
    folder.mkdir(parents=True, exist_ok=True)
    _write_cells(folder, cells)
    failed = []
    for index, cell in enumerate(cells, 1):
        state = cell.state()
        if state == "finished":
            log.info("cell %d/%d %s: finished, skipped", index, len(cells), cell.name)
            continue
        log.info("cell %d/%d %s: %s", index, len(cells), cell.name, state)
        options = dict(cell.options)
        if "resume" in method_class(cell.method).config_class.option_names():
            options["resume"] = cell.folder.exists()  # continue from its last checkpoint
        try:
            train_run(cell.method, options, build(DataConfig, cell.data_values), cell.folder)
        except (LlmclfError, RuntimeError) as exc:  # one failed cell does not stop the grid
            log.error("cell %s failed: %s", cell.name, str(exc).splitlines()[0])
            failed.append(cell.name)
    finished = [c for c in cells if c.state() == "finished"]
    report = None
    if len(finished) >= 2:
        report = compare_runs([c.folder for c in finished], folder / GRID_REPORT)
        log.info("report: %s", folder / GRID_REPORT / "report.html")
    else:
        log.warning("fewer than two finished cells: no comparison report")
    if failed:
        raise LlmclfError(
            f"{len(failed)} of {len(cells)} cells failed ({', '.join(failed)}); "
            "run the grid again to retry them"
        )
    return {"cells": {c.name: c.state() for c in cells}, "report": report}


def _write_cells(folder: Path, cells: list[Cell]) -> None:
    """The expanded grid, for the record (cells.json)."""
    rows = [
        {"name": c.name, "method": c.method, "options": c.options, "data": c.data_values}
        for c in cells
    ]
    write_json(folder / CELLS_FILE, rows)
