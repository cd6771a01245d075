import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from llmclf.cli import main
from tests.conftest import make_texts

TINY = [
    "--epochs",
    "2",
    "--max-length",
    "32",
    "--learning-rate",
    "5e-3",
    "--head-learning-rate",
    "1e-2",
    "--batch-size",
    "8",
    "--eval-batch-size",
    "8",
]


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    texts, labels = make_texts(90)
    path = folder / "train.csv"
    pd.DataFrame({"body": texts, "topic": labels}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained_run(tiny_llama, csv_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    code = main(
        [
            "train",
            "--method",
            "head",
            "--model",
            tiny_llama,
            "--data",
            str(csv_data),
            "--text-column",
            "body",
            "--label-column",
            "topic",
            "--output",
            str(run),
            *TINY,
        ]
    )
    assert code == 0
    return run


def test_train_writes_a_complete_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "labels.json",
        "config.yaml",
        "metrics.json",
        "test_predictions.jsonl",
    } <= names
    assert "checkpoints" not in names and ".staging" not in names
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in (
        "accuracy",
        "macro_f1",
        "micro_f1",
        "weighted_f1",
        "per_class",
        "n",
        "trainable_params",
        "total_params",
        "train_seconds",
        "peak_rss_mb",
    ):
        assert key in metrics
    assert metrics["n"] == 9 and set(metrics["per_class"]) == {"money", "sport", "tech"}
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["method"] == "head" and config["data"]["text_column"] == ["body"]
    assert config["train"]["learning_rate"] == 5e-3
    predictions = pd.read_json(trained_run / "test_predictions.jsonl", lines=True)
    assert len(predictions) == 9 and {"label", "prediction", "proba_money"} <= set(
        predictions.columns
    )


def test_evaluate_writes_metrics_and_prints(trained_run, csv_data, capsys, tmp_path):
    assert main(["evaluate", str(trained_run)]) == 0
    stored = json.loads((trained_run / "metrics.json").read_text())
    again = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert again["macro_f1"] == pytest.approx(stored["macro_f1"])
    assert "macro-F1" in capsys.readouterr().out
    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                str(trained_run),
                "--data",
                str(csv_data),
                "--split",
                "all",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["n"] == 90


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_keeps_rows_columns_and_order(trained_run, tmp_path, suffix):
    frame = pd.DataFrame(
        {"id": [3, 1, 2], "body": ["bank stock market", "match goal team win", "chip code app"]}
    )
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)
    target = tmp_path / f"out{suffix}"
    assert main(["predict", str(trained_run), "--input", str(source), "--output", str(target)]) == 0
    out = pd.read_csv(target) if suffix == ".csv" else pd.read_json(target, lines=True)
    assert list(out["id"]) == [3, 1, 2]
    assert list(out.columns) == [
        "id",
        "body",
        "prediction",
        "proba_money",
        "proba_sport",
        "proba_tech",
    ]
    assert set(out["prediction"]) <= {"money", "sport", "tech"}
    assert out[["proba_money", "proba_sport", "proba_tech"]].sum(axis=1).round(4).eq(1).all()


def test_config_file_is_read_and_flags_override_it(tiny_llama, csv_data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": tiny_llama,
                "data": str(csv_data),
                "text_column": ["body"],
                "label_column": "topic",
                "train": {"epochs": 1, "learning_rate": 1e-3},
                "lora_r": 4,
                "max_length": 32,
            }
        )
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--lora-r", "2", "--output", str(run)]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["adapter"]["lora_r"] == 2  # the flag wins
    assert saved["train"]["learning_rate"] == 1e-3 and saved["train"]["epochs"] == 1
    assert json.loads((run / "adapter_config.json").read_text())["r"] == 2


def test_a_runs_config_yaml_can_be_reused(trained_run, tmp_path):
    run = tmp_path / "again"
    assert (
        main(
            [
                "train",
                "--config",
                str(trained_run / "config.yaml"),
                "--epochs",
                "1",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    before = yaml.safe_load((trained_run / "config.yaml").read_text())
    after = yaml.safe_load((run / "config.yaml").read_text())
    assert after["data"] == before["data"] and after["adapter"] == before["adapter"]
    assert after["train"]["epochs"] == 1


@pytest.mark.slow  # a CLI subprocess, and a 4-bit training
def test_four_bit_base_trains_on_cpu(tiny_llama, csv_data, tmp_path):
    run = tmp_path / "q"
    assert (
        main(
            [
                "train",
                "--model",
                tiny_llama,
                "--data",
                str(csv_data),
                "--text-column",
                "body",
                "--label-column",
                "topic",
                "--quantize",
                "4bit",
                "--output",
                str(run),
                *TINY,
            ]
        )
        == 0
    )
    from llmclf.runs import load_classifier

    clf = load_classifier(run, progress=False)
    linear = clf.model_.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(linear).__name__ == "Linear4bit"
    assert (
        clf.model_.get_base_model().score.modules_to_save["default"].weight.dtype.is_floating_point
    )
    assert json.loads((run / "metrics.json").read_text())["accuracy"] > 0.5
    # int8 prediction needs a full-precision base: one line, exit 2, no output file
    pd.DataFrame({"body": ["bank stock market"]}).to_csv(tmp_path / "in.csv", index=False)
    result = run_cli(
        "predict", str(run), "--input", "in.csv", "--output", "out.csv", "--int8", cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "llmclf: error: --int8 needs a full-precision run; this one's base is loaded in 4-bit"
    )
    assert not (tmp_path / "out.csv").exists()


def test_int8_predict_and_evaluate(trained_run, csv_data, tmp_path, capsys):
    frame = pd.DataFrame({"body": ["bank stock market", "match goal team win", "chip code app"]})
    frame.to_csv(tmp_path / "in.csv", index=False)
    for name, extra in (("full.csv", []), ("int8.csv", ["--int8"])):
        args = ["predict", str(trained_run), "--input", str(tmp_path / "in.csv")]
        assert main([*args, "--output", str(tmp_path / name), *extra]) == 0
    full, fast = pd.read_csv(tmp_path / "full.csv"), pd.read_csv(tmp_path / "int8.csv")
    probabilities = ["proba_money", "proba_sport", "proba_tech"]
    np.testing.assert_allclose(fast[probabilities], full[probabilities], atol=0.05)
    assert main(["evaluate", str(trained_run), "--int8", "--output", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    stored = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["int8"] is True and "int8" not in stored
    assert metrics["n"] == stored["n"] and abs(metrics["accuracy"] - stored["accuracy"]) <= 0.1
    capsys.readouterr()
    assert main(["evaluate", "--zero-shot", "--data", str(csv_data), "--int8"]) == 2
    assert "--int8 applies to trained runs" in capsys.readouterr().err


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "llmclf.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.slow  # a CLI subprocess per case
@pytest.mark.parametrize(
    "args,message",
    [
        (["--data", "missing.csv"], "missing.csv does not exist"),
        (["--data", "bad.xlsx"], "extension must be one of"),
        (["--data", "d.csv", "--text-column", "nope"], "no column 'nope'"),
        (
            ["--data", "one.csv", "--text-column", "body", "--label-column", "topic"],
            "only one class",
        ),
        (["--data", "empty.csv"], "has no rows"),
        (
            [
                "--data",
                "d.csv",
                "--text-column",
                "body",
                "--label-column",
                "topic",
                "--lora-r",
                "0",
            ],
            "--lora-r must be > 0",
        ),
        (
            [
                "--data",
                "d.csv",
                "--text-column",
                "body",
                "--label-column",
                "topic",
                "--model",
                "./no/such/dir",
            ],
            "is not a built-in name",
        ),
    ],
)
def test_bad_input_gives_one_line_exit_2_and_no_output(
    tmp_path, csv_data, tiny_llama, args, message
):
    pd.read_csv(csv_data).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "bad.xlsx").write_text("x")
    pd.DataFrame({"body": ["a", "b", "c"], "topic": ["x", "x", "x"]}).to_csv(
        tmp_path / "one.csv", index=False
    )
    (tmp_path / "empty.csv").write_text("text,label\n")
    has_model = "--model" in args
    result = run_cli(
        "train",
        *([] if has_model else ["--model", tiny_llama]),
        *args,
        "--output",
        "out",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("llmclf: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_labels_unseen_at_evaluation_are_refused(trained_run, tmp_path, capsys):
    pd.DataFrame({"body": ["a b", "c d"], "topic": ["money", "weather"]}).to_csv(
        tmp_path / "e.csv", index=False
    )
    code = main(["evaluate", str(trained_run), "--data", str(tmp_path / "e.csv"), "--split", "all"])
    assert code == 2
    assert "never saw: 'weather'" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(trained_run, csv_data, capsys):
    assert main(["train", "--data", str(csv_data), "--output", str(trained_run)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


@pytest.mark.slow  # a training subprocess, killed and resumed
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_llama, csv_data, tmp_path):
    """kill -9 mid-training, then --resume: the same test predictions and the same logged
    losses as a run never killed; the run's time includes the killed process's training."""
    common = [
        "train",
        "--model",
        tiny_llama,
        "--data",
        str(csv_data),
        "--text-column",
        "body",
        "--label-column",
        "topic",
        "--epochs",
        "12",
        "--max-length",
        "32",
        "--early-stopping-patience",
        "0",
        "--batch-size",
        "4",
        "--dtype",
        "float32",  # the subprocesses do not see conftest's CPU without AMX
    ]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main([*common, "--output", str(reference)]) == 0
    args = [*common, "--output", str(run)]
    process = subprocess.Popen(
        [sys.executable, "-m", "llmclf.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(
        run.glob("checkpoints/checkpoint-*/trainer_state.json")
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "metrics.json").exists()
    refused = run_cli(*args)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr

    metrics = json.loads((run / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    assert 0 < metrics["resumed_from_step"] < metrics["train_steps"] == expected["train_steps"]
    assert 0 < metrics["train_seconds_before_resume"] < metrics["train_seconds"]
    assert metrics["macro_f1"] == expected["macro_f1"]
    got = pd.read_json(run / "test_predictions.jsonl", lines=True)
    want = pd.read_json(reference / "test_predictions.jsonl", lines=True)
    assert list(got["prediction"]) == list(want["prediction"])
    probabilities = [c for c in want.columns if c.startswith("proba_")]
    assert probabilities
    np.testing.assert_allclose(got[probabilities], want[probabilities], atol=1e-5)

    def losses(folder):
        log = json.loads((folder / "train_log.json").read_text())
        return [(row["step"], round(row["loss"], 4)) for row in log if "loss" in row]

    assert losses(run) == losses(reference)


def test_multi_label_cli_round_trip_with_separator(tiny_llama, tmp_path):
    texts, labels = make_texts(90, seed=5)
    joined = [lab if i % 2 else f"{lab}|extra" for i, lab in enumerate(labels)]
    pd.DataFrame({"text": texts, "label": joined}).to_csv(tmp_path / "m.csv", index=False)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                tiny_llama,
                "--data",
                str(tmp_path / "m.csv"),
                "--label-sep",
                "|",
                "--output",
                str(run),
                *TINY,
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"samples_f1", "hamming_loss", "subset_accuracy"} <= set(metrics)
    labels_json = json.loads((run / "labels.json").read_text())
    assert labels_json["multi_label"] and labels_json["label_sep"] == "|"
    assert len(labels_json["thresholds"]) == 4
    pd.DataFrame({"text": texts[:4]}).to_csv(tmp_path / "in.csv", index=False)
    assert (
        main(
            [
                "predict",
                str(run),
                "--input",
                str(tmp_path / "in.csv"),
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 0
    )
    out = pd.read_json(tmp_path / "o.jsonl", lines=True)
    classes = set(labels_json["classes"])
    assert all(set(filter(None, p.split("|"))) <= classes for p in out["prediction"])
    assert [c for c in out.columns if c.startswith("proba_")] == [
        f"proba_{c}" for c in labels_json["classes"]
    ]


def test_every_flag_of_the_release_before_the_command_table_still_parses():
    """tests/fixtures/cli_flags_cee743f.json: each subcommand's flags and positionals as
    the hand-written parser of commit cee743f had them; the table-built parser keeps all."""
    from pathlib import Path

    from llmclf.cli import build_parser

    before = json.loads(
        (Path(__file__).parents[1] / "fixtures" / "cli_flags_cee743f.json").read_text()
    )
    subparsers = build_parser()._subparsers._group_actions[0].choices
    for command, flags in before.items():
        now = set()
        for action in subparsers[command]._actions:
            now.update(action.option_strings or [f"POS:{action.dest}"])
        assert set(flags) <= now, (command, sorted(set(flags) - now))
