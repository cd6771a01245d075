"""--report-to: the Trainer's own tracker integrations; TensorBoard tested offline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from llmclf.cli import main
from tests.conftest import make_texts


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    texts, labels = make_texts(60, seed=4)
    path = tmp_path_factory.mktemp("tracking") / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


@pytest.mark.parametrize("method", ["head", "instruct"])
def test_tensorboard_event_files_hold_the_loss_and_validation_metrics(
    method, tiny_llama, data, tmp_path
):
    # the tensorboard extra (in dev, so make test runs this); a machine without it skips
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
    run = tmp_path / "run"
    args = ["train", "--method", method, "--model", tiny_llama, "--data", str(data)]
    args += ["--epochs", "2", "--max-length", "64", "--early-stopping-patience", "0"]
    assert main([*args, "--report-to", "tensorboard", "--output", str(run)]) == 0

    metrics = json.loads((run / "metrics.json").read_text())
    logs = Path(metrics["tracking"]["logs"])
    assert metrics["tracking"]["report_to"] == "tensorboard"
    assert logs == run / "logs" / "tensorboard" and list(logs.glob("events.out.tfevents.*"))
    found = scalars(logs)
    log = json.loads((run / "train_log.json").read_text())
    # every loss and validation figure the Trainer logged, at its step
    losses = [(row["step"], row["loss"]) for row in log if "loss" in row]
    f1 = [(row["step"], row["eval_macro_f1"]) for row in log if "eval_macro_f1" in row]
    assert losses and len(f1) == 2
    assert [s for s, _ in found["train/loss"]] == [s for s, _ in losses]
    assert [v for _, v in found["train/loss"]] == pytest.approx([v for _, v in losses], rel=1e-5)
    assert [s for s, _ in found["eval/macro_f1"]] == [s for s, _ in f1]
    assert [v for _, v in found["eval/macro_f1"]] == pytest.approx([v for _, v in f1], rel=1e-5)


def test_without_report_to_nothing_is_tracked(tiny_llama, data, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--model", tiny_llama, "--data", str(data), "--epochs", "1"]
    assert main([*args, "--output", str(run)]) == 0
    assert "tracking" not in json.loads((run / "metrics.json").read_text())
    assert not (run / "logs").exists()


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_not_installed_is_refused_before_any_data_loads(
    tracker, tiny_llama, tmp_path, capsys, monkeypatch
):
    import transformers.integrations as integrations

    monkeypatch.setattr(integrations, f"is_{tracker}_available", lambda: False)
    code = main(
        ["train", "--model", tiny_llama, "--data", str(tmp_path / "missing.csv")]
        + ["--report-to", tracker, "--output", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"--report-to {tracker} needs the {tracker} package: pip install {tracker}" in err
    assert "missing.csv" not in err  # the data was never read
    assert not (tmp_path / "run").exists()
