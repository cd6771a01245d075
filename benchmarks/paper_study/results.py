"""One study cell as a small JSON record: what EXPERIMENTS.md needs of a finished run
folder (its config, metrics, calibration and per-example test predictions), never its
weights. Records are checked in, so the report re-renders without re-training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmclf.config import flatten
from llmclf.evaluation.comparison import RunEvaluation
from llmclf.labels import LabelSchema
from llmclf.run_folder import GRID_REPORT, RunFolder, write_json
from llmclf.runs.compare import stored_evaluation

CELLS = "cells"  # RESULTS/cells/<data>/<run>.json
TIMING = "timing.json"


def kind_of(metrics: dict) -> str:
    """train (a grid cell), zero-shot or distill: what made the run folder."""
    if metrics.get("zero_shot"):
        return "zero-shot"
    return "distill" if "teacher_run" in metrics else "train"


def _short_paths(values: dict) -> dict:
    """Absolute paths (a distilled student's teacher) as the run folder's name."""
    return {
        k: Path(v).name if isinstance(v, str) and k in ("teacher", "teacher_run") else v
        for k, v in values.items()
    }


def _significant(value: float) -> float:
    """6 significant digits: small probabilities stay exact enough to re-scale them."""
    return float(f"{value:.6g}")


def cell_record(folder: str | Path, grids: list[str]) -> dict:
    """The record of one finished run folder (``grids``: the study grids that list it)."""
    folder = Path(folder)
    run = RunFolder(folder)
    evaluation = stored_evaluation(folder, folder.name)
    metrics = _short_paths(run.metrics())
    config = _short_paths(flatten(run.config()))
    return {
        "name": folder.name,
        "kind": kind_of(metrics),
        "grids": sorted(grids),
        "data": config.get("data"),
        "method": config.get("method"),
        "config": config,
        "classes": evaluation.schema.classes,
        "multi_label": evaluation.schema.multi_label,
        "test_set_hash": evaluation.test_hash,
        "metrics": metrics,
        "temperature": run.temperature(),
        "calibration": run.calibration(),
        "truth": evaluation.truth.tolist(),
        "predicted": evaluation.predicted.tolist(),
        "proba": [[_significant(p) for p in row] for row in evaluation.proba],
        "proba_temperature": evaluation.proba_temperature,
    }


def evaluation_of(record: dict) -> RunEvaluation:
    """A record as the arrays llmclf's comparison functions take."""
    schema = LabelSchema(list(record["classes"]), bool(record["multi_label"]))
    return RunEvaluation(
        name=record["name"],
        folder=Path(record["name"]),
        schema=schema,
        truth=np.asarray(record["truth"], dtype=np.int64),
        predicted=np.asarray(record["predicted"], dtype=np.int64),
        proba=np.asarray(record["proba"], dtype=np.float64),
        proba_temperature=float(record["proba_temperature"]),
        temperature=float(record["temperature"]),
        test_hash=record["test_set_hash"],
        run_metrics=record["metrics"],
        config=record["config"],
        eval_examples_per_s=record["metrics"].get("eval_examples_per_s"),
    )


def data_slug(data: str) -> str:
    """A data set's folder name: a built-in name, or a file's stem."""
    return Path(data).stem if Path(data).suffix else Path(data).name


def finished_runs(folder: Path) -> list[Path]:
    """Every finished run folder directly under ``folder`` (grid cells, zero-shot and
    distilled runs), not the grid's comparison report."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name != GRID_REPORT and RunFolder(p).finished
    )


def write_record(record: dict, results: Path) -> Path:
    path = results / CELLS / data_slug(record["data"]) / f"{record['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return path


def read_records(results: Path) -> list[dict]:
    """Every checked-in record under ``results`` (none when the study never ran)."""
    paths = sorted((results / CELLS).glob("*/*.json"))
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]
