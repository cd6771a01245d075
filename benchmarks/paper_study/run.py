"""The study: run the grids of examples/study/ in order, the steps a grid cannot express
(calibrate, zero-shot, distill), collect every finished run as a record, decide the
claims and render EXPERIMENTS.md; with ``report_only``, only the last two, from the
checked-in records. Every step is resumable: finished cells and steps are skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.paper_study.claims import CORE_LORA, Datasets, evaluate_claims, select
from benchmarks.paper_study.render import write_report
from benchmarks.paper_study.results import (
    TIMING,
    cell_record,
    finished_runs,
    read_records,
    write_record,
)
from llmclf.config import DataConfig, build
from llmclf.errors import LlmclfError
from llmclf.run_folder import RunFolder, read_json, write_json
from llmclf.runs.calibrate import calibrate_run
from llmclf.runs.distill import distill_run
from llmclf.runs.grid import expand, read_grid, run_grid
from llmclf.runs.zero_shot import zero_shot_run

log = logging.getLogger("llmclf")

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Grid:
    """One grid file and the steps that follow it (names of ``STEPS``)."""

    name: str
    path: Path
    steps: tuple[str, ...] = ()


@dataclass
class Study:
    grids: list[Grid]
    results: Path  # the checked-in records, timing.json and figures
    report: Path  # EXPERIMENTS.md
    datasets: Datasets = field(default_factory=Datasets)


def default_study() -> Study:
    """The study as shipped, most claims per minute first (an interrupted study has
    decided the most it could): the core grid, then multi-label and the poolings
    (claims 2 and 4), the verbalizers, the LoRA sweep (the longest) and reuters-r8."""
    names = [
        ("core", ("calibrate", "zero-shot", "distill")),
        ("multi-label", ()),
        ("pooling", ()),
        ("pooling-multi", ()),
        ("verbalizer", ()),
        ("lora-budget", ()),
        ("reuters", ()),
    ]
    folder = ROOT / "examples" / "study"
    return Study(
        [Grid(n, folder / f"{n}.yaml", steps) for n, steps in names],
        results=ROOT / "benchmarks" / "results" / "study",
        report=ROOT / "EXPERIMENTS.md",
    )


# ---------------------------------------------------------------------------------------
# Steps after a grid: on its finished cells, in its output folder
# ---------------------------------------------------------------------------------------


def grid_output(grid: Grid) -> Path:
    return Path(read_grid(grid.path)["output"])


def _core_cells(grid: Grid, method: str, extra: dict) -> list[Path]:
    cells = expand(read_grid(grid.path), grid_output(grid))
    wanted = {**CORE_LORA, **extra}
    return [
        c.folder
        for c in cells
        if c.method == method
        and all(c.options.get(k) == v for k, v in wanted.items())
        and RunFolder(c.folder).finished
    ]


def step_calibrate(grid: Grid) -> None:
    """Temperature scaling of every finished head cell, fitted on validation (claim 6)."""
    for folder in _core_cells(grid, "head", {"pooling": "last"}):
        # every saved run has a calibration.json (temperature 1); a fitted one says where
        if "fitted_on" not in RunFolder(folder).calibration():
            log.info("calibrating %s", folder.name)
            calibrate_run(folder)


def _template(grid: Grid, method: str, extra: dict) -> tuple[dict, dict]:
    """The options and data options of the grid's first cell of ``method``."""
    cell = next(
        c
        for c in expand(read_grid(grid.path), grid_output(grid))
        if c.method == method and all(c.options.get(k) == v for k, v in extra.items())
    )
    return cell.options, cell.data_values


def step_zero_shot(grid: Grid) -> None:
    """The untrained model answering the instruct cells' prompts on the same test split."""
    options, data_values = _template(grid, "instruct", {"verbalizer": "names"})
    keep = ("model", "max_length", "verbalizer", "predict_mode", "eval_batch_size", "dtype")
    zero = {k: options[k] for k in keep if k in options}
    output = grid_output(grid) / f"zero-shot-{Path(str(zero['model'])).name}-names"
    if not RunFolder(output).finished:
        zero_shot_run("instruct", zero, build(DataConfig, data_values), "test", output)


def step_distill(grid: Grid) -> None:
    """A minilm-l6 student of the seed-42 head cell (claim 7)."""
    teachers = [
        f for f in _core_cells(grid, "head", {"pooling": "last"}) if f.name.endswith("seed42")
    ]
    if not teachers:
        log.warning("no finished seed-42 head cell to distil")
        return
    teacher = teachers[0]
    output = grid_output(grid) / f"distill-minilm-l6-from-{teacher.name}"
    if RunFolder(output).finished:
        return
    from llmclf.methods.distill import DistillConfig

    _, data_values = _template(grid, "head", {})
    options = {"model": "minilm-l6", "seed": 42, "resume": output.exists()}
    distill_run(teacher, options, build(DataConfig, data_values), DistillConfig(), output)


STEPS = {"calibrate": step_calibrate, "zero-shot": step_zero_shot, "distill": step_distill}


# ---------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------


def run_grids(study: Study, only: set[str] | None = None) -> dict:
    """Run each grid and its steps in order; a failed grid (pooling before its options
    exist) is reported and the study goes on. Returns the timing."""
    timing = {"grids": {}, "machine": _machine()}
    start = time.perf_counter()
    for grid in study.grids:
        if only and grid.name not in only:
            continue
        began = time.perf_counter()
        status = "finished"
        try:
            run_grid(grid.path)
            for step in grid.steps:
                STEPS[step](grid)
        except (LlmclfError, RuntimeError) as exc:
            status = f"failed: {str(exc).splitlines()[0][:160]}"
            log.error("grid %s: %s", grid.name, status)
        timing["grids"][grid.name] = {
            "wall_seconds": round(time.perf_counter() - began, 1),
            "status": status,
        }
    timing["total_seconds"] = round(time.perf_counter() - start, 1)
    timing["finished"] = time.strftime("%Y-%m-%d %H:%M")
    return timing


def collect(study: Study) -> list[dict]:
    """A record of every finished run in every grid's output folder, written under
    ``study.results``; returns all records there."""
    grids_of: dict[Path, list[str]] = {}
    collected = []
    for grid in study.grids:
        try:
            cells = expand(read_grid(grid.path), grid_output(grid))
        except LlmclfError as exc:  # a grid whose options this llmclf lacks
            log.warning("grid %s not collected: %s", grid.name, str(exc).splitlines()[0])
            continue
        collected.append(grid)
        for cell in cells:
            grids_of.setdefault(cell.folder.resolve(), []).append(grid.name)
    # the steps' runs (zero-shot, distilled) belong to the grid whose steps made them;
    # grids share output folders, so a run no grid lists as a cell is a step's
    cells_of_grids = set(grids_of)
    for grid in collected:
        if grid.steps:
            for folder in finished_runs(grid_output(grid)):
                if folder.resolve() not in cells_of_grids:
                    grids_of.setdefault(folder.resolve(), []).append(grid.name)
    for folder, grids in grids_of.items():
        if RunFolder(folder).finished:
            write_record(cell_record(folder, sorted(set(grids))), study.results)
    return read_records(study.results)


def grid_costs(study: Study, records: list[dict], timing: dict) -> dict:
    """Per grid: cells, finished cells and the sum of their own wall seconds."""
    out = dict(timing)
    out["grids"] = {}
    for grid in study.grids:
        previous = timing.get("grids", {}).get(grid.name, {})
        try:
            cells = expand(read_grid(grid.path), grid_output(grid))
            names = {c.folder.name for c in cells}
        except LlmclfError:
            cells, names = [], set()
        mine = [r for r in records if grid.name in r["grids"]]
        out["grids"][grid.name] = {
            **previous,
            "cells": len(cells),
            "finished": len([r for r in mine if r["name"] in names]),
            "cell_wall_seconds": round(sum(r["metrics"].get("wall_seconds") or 0 for r in mine), 1),
        }
    return out


def render(study: Study, records: list[dict] | None = None, timing: dict | None = None) -> Path:
    records = read_records(study.results) if records is None else records
    path = study.results / TIMING
    timing = timing if timing is not None else (read_json(path) if path.is_file() else {})
    claims = evaluate_claims(records, study.datasets)
    return write_report(claims, records, timing, study.datasets, study.results, study.report)


def run_study(study: Study, report_only: bool = False, only: set[str] | None = None) -> Path:
    """The whole study (``report_only``: re-render from the checked-in records)."""
    if report_only:
        return render(study)
    timing = run_grids(study, only)
    path = study.results / TIMING
    if only and path.is_file():  # the grids not run now keep their last times, and the
        earlier = read_json(path)  # total stays that of the last whole study
        timing["grids"] = {**earlier.get("grids", {}), **timing["grids"]}
        for key in ("total_seconds", "finished"):
            if key in earlier:
                timing[key] = earlier[key]
    records = collect(study)
    timing = grid_costs(study, records, timing)
    study.results.mkdir(parents=True, exist_ok=True)
    write_json(study.results / TIMING, timing)
    return render(study, records, timing)


def _machine() -> str:
    import os

    from llmclf.speed import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores"


__all__ = ["Grid", "Study", "default_study", "run_study", "select"]
