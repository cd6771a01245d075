"""`llmclf experiment`: expanding, validating and resuming a grid of tiny runs."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llmclf.cli import main
from llmclf.errors import LlmclfError
from llmclf.runs import method_classes
from llmclf.runs.grid import expand, read_grid, run_grid
from tests.conftest import make_texts

EXAMPLE = Path(__file__).parents[2] / "examples" / "grid-bbc-news.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid-data") / "d.csv"
    texts, labels = make_texts(90, seed=3)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def grid_file(folder, tiny_llama, data, **changes):
    grid = {
        "output": str(folder / "grid"),
        "data": str(data),
        "models": [tiny_llama],
        "seeds": [7],
        "options": {
            "epochs": 1,
            "max_length": 32,
            "batch_size": 8,
            "eval_batch_size": 16,
            "learning_rate": 5e-3,
            "keep_checkpoints": True,
        },
        "methods": {"head": {"pooling": ["last", "mean"]}},
        **changes,
    }
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_the_shipped_grid_expands_for_every_method_this_llmclf_has(tmp_path):
    grid = read_grid(EXAMPLE)
    assert set(grid["methods"]) == {"head", "instruct"}
    known = {m: v for m, v in grid["methods"].items() if m in method_classes()}
    cells = expand({**grid, "methods": known}, tmp_path)
    head = [c for c in cells if c.method == "head"]
    assert [c.name for c in head] == [
        "head-smollm2-135m-pooling=last-seed42",
        "head-smollm2-135m-pooling=mean-seed42",
    ]
    assert head[0].data_values == {"data": "bbc-news", "train_limit": 400}  # data options
    assert head[0].options["max_length"] == 128 and head[0].options["seed"] == 42
    assert head[1].options["pooling"] == "mean" and head[1].options["head_learning_rate"] == 0.01


def test_unknown_methods_and_options_fail_before_anything_trains(tmp_path, tiny_llama, data):
    path = grid_file(tmp_path, tiny_llama, data, methods={"head": {}, "no-such-method": {}})
    with pytest.raises(LlmclfError, match="unknown method 'no-such-method'"):
        run_grid(path)
    path = grid_file(tmp_path, tiny_llama, data, methods={"head": {"poolin": ["last"]}})
    with pytest.raises(LlmclfError, match="method head has no option poolin"):
        run_grid(path)
    path = grid_file(tmp_path, tiny_llama, data, methods={"head": {"pooling": ["last", "maxx"]}})
    with pytest.raises(LlmclfError, match="--pooling must be one of"):
        run_grid(path)
    assert not (tmp_path / "grid").exists()


def test_grid_trains_each_cell_once_resumes_unfinished_ones_and_reports(
    tmp_path, tiny_llama, data, capsys
):
    path = grid_file(tmp_path, tiny_llama, data)
    assert main(["experiment", str(path)]) == 0
    grid = tmp_path / "grid"
    last, mean = (
        grid / f"head-{Path(tiny_llama).name}-pooling=last-seed7",
        grid / (f"head-{Path(tiny_llama).name}-pooling=mean-seed7"),
    )
    assert (last / "metrics.json").is_file() and (mean / "metrics.json").is_file()
    report = json.loads((grid / "report" / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == [last.name, mean.name]
    assert report["runs"][0]["settings"] == {"pooling": "last"}
    assert len(report["pairs"]) == 1

    # "kill" the second cell after its last checkpoint: it has checkpoints, no metrics.json
    finished_at = (last / "metrics.json").stat().st_mtime_ns
    adapter = (last / "adapter_model.safetensors").read_bytes()
    (mean / "metrics.json").unlink()
    main(["experiment", str(path), "--dry-run"])
    listed = capsys.readouterr().out
    assert "finished" in listed and "unfinished (checkpoint-" in listed

    assert main(["experiment", str(path)]) == 0
    assert (last / "metrics.json").stat().st_mtime_ns == finished_at  # not retrained
    assert (last / "adapter_model.safetensors").read_bytes() == adapter
    resumed = json.loads((mean / "metrics.json").read_text())
    assert resumed["resumed_from_step"] > 0
    assert (grid / "report" / "report.html").is_file()


def test_a_finished_cell_trained_with_other_options_is_refused(tmp_path, tiny_llama, data):
    path = grid_file(tmp_path, tiny_llama, data, methods={"head": {"pooling": ["last"]}})
    run_grid(path)
    changed = grid_file(
        tmp_path,
        tiny_llama,
        data,
        methods={"head": {"pooling": ["last"]}},
        options={"epochs": 2, "max_length": 32, "batch_size": 8},
    )
    with pytest.raises(LlmclfError, match="was trained with epochs=1 but the grid now says 2"):
        run_grid(changed)
