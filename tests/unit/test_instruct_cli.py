import json

import pandas as pd
import pytest
import yaml

from llmclf.cli import main
from tests.conftest import make_texts
from tests.instruct_models import make_instruct_llama

FAST = [
    "--epochs",
    "3",
    "--max-length",
    "64",
    "--learning-rate",
    "1e-2",
    "--batch-size",
    "8",
    "--eval-batch-size",
    "8",
]
COLUMNS = ["--text-column", "body", "--label-column", "topic"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_instruct_llama(tmp_path_factory.mktemp("cli-model"))


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-data") / "train.csv"
    texts, labels = make_texts(90)
    pd.DataFrame({"body": texts, "topic": labels}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def instruct_run(model, csv_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli-runs") / "run"
    args = ["train", "--method", "instruct", "--model", model, "--data", str(csv_data)]
    assert main([*args, *COLUMNS, "--output", str(run), *FAST]) == 0
    return run


def test_train_writes_a_complete_run_folder(instruct_run):
    names = {p.name for p in instruct_run.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "instruct.json",
        "labels.json",
        "calibration.json",
        "config.yaml",
        "metrics.json",
        "test_predictions.jsonl",
        "train_log.json",
    } <= names
    assert "checkpoints" not in names
    metrics = json.loads((instruct_run / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "micro_f1", "per_class", "n", "trainable_params"):
        assert key in metrics
    assert metrics["method"] == "instruct" and metrics["predict_mode"] == "score"
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    config = yaml.safe_load((instruct_run / "config.yaml").read_text())
    assert config["method"] == "instruct" and config["instruct"]["verbalizer"] == "names"
    adapter = json.loads((instruct_run / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM"
    predictions = pd.read_json(instruct_run / "test_predictions.jsonl", lines=True)
    assert {"text", "label", "prediction", "proba_money", "proba_sport", "proba_tech"} <= set(
        predictions.columns
    )


def test_evaluate_in_generate_mode_reports_unparsed(instruct_run, tmp_path, capsys):
    out = tmp_path / "gen"
    assert (
        main(["evaluate", str(instruct_run), "--predict-mode", "generate", "--output", str(out)])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["predict_mode"] == "generate"
    assert 0 <= metrics["unparsed"] <= metrics["n"]
    assert metrics["unparsed_rate"] == pytest.approx(metrics["unparsed"] / metrics["n"], abs=1e-4)
    predictions = pd.read_json(out / "predictions.jsonl", lines=True)
    assert "answer" in predictions.columns
    assert "unparsed answers" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_predict_file(instruct_run, tmp_path, mode):
    source = tmp_path / "in.csv"
    pd.DataFrame({"id": [2, 1], "body": ["bank stock market", "match goal team"]}).to_csv(
        source, index=False
    )
    target = tmp_path / "out.jsonl"
    args = ["predict", str(instruct_run), "--input", str(source), "--output", str(target)]
    assert main([*args, "--predict-mode", mode]) == 0
    out = pd.read_json(target, lines=True)
    assert list(out["id"]) == [2, 1]
    assert set(out["prediction"]) <= {"money", "sport", "tech", ""}
    assert ("answer" in out.columns) == (mode == "generate")


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_zero_shot_evaluation(model, csv_data, tmp_path, mode, capsys):
    out = tmp_path / "zs"
    args = ["evaluate", "--zero-shot", "--model", model, "--method", "instruct"]
    code = main(
        [*args, "--data", str(csv_data), *COLUMNS, "--max-length", "64", "--predict-mode", mode]
        + ["--output", str(out)]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["zero_shot"] is True and metrics["trainable_params"] == 0
    assert metrics["predict_mode"] == mode and metrics["n"] == 9
    for key in ("accuracy", "macro_f1", "micro_f1", "per_class", "total_params"):
        assert key in metrics
    assert ("unparsed" in metrics) == (mode == "generate")
    # the test split's predictions, named as a trained run's: llmclf compare reads them
    assert (out / "test_predictions.jsonl").is_file()
    assert not (out / "adapter_config.json").exists()
    # the folder is a run: predict works on it
    source = tmp_path / "in.csv"
    pd.DataFrame({"body": ["bank stock"]}).to_csv(source, index=False)
    assert (
        main(["predict", str(out), "--input", str(source), "--output", str(tmp_path / "p.csv")])
        == 0
    )
    assert "written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["evaluate"], "evaluate needs a RUN folder"),
        (
            ["evaluate", "RUN", "--verbalizer", "letters"],
            "--verbalizer only apply with --zero-shot",
        ),
        (["evaluate", "RUN", "--zero-shot"], "give no RUN folder"),
        (["evaluate", "--zero-shot", "--method", "head"], "needs a method that answers untrained"),
        (["evaluate", "--zero-shot", "--method", "tree"], "--method must be one of"),
    ],
)
def test_evaluate_usage_errors(args, message, capsys, instruct_run, model, csv_data):
    args = [str(instruct_run) if a == "RUN" else a for a in args]
    if "--zero-shot" in args:
        args += ["--model", model, "--data", str(csv_data), *COLUMNS]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_threshold_flag_is_shared_by_both_methods(model, csv_data, tmp_path, capsys):
    args = ["train", "--method", "instruct", "--threshold", "2", "--model", model]
    code = main([*args, "--data", str(csv_data), *COLUMNS, "--output", str(tmp_path / "r")])
    assert code == 2 and "--threshold must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_lora_none_is_refused_for_instruct(model, csv_data, tmp_path, capsys):
    args = ["train", "--method", "instruct", "--lora", "none", "--model", model]
    code = main([*args, "--data", str(csv_data), *COLUMNS, "--output", str(tmp_path / "r")])
    assert code == 2 and "--lora none" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_shipped_example_config_is_valid():
    from pathlib import Path

    from llmclf.config import DataConfig, build, field_names, read_yaml
    from llmclf.runs import method_classes

    values = read_yaml(Path(__file__).parents[2] / "examples" / "instruct.yaml")
    config_class = method_classes()[values.pop("method")].config_class
    assert set(values) <= field_names(DataConfig) | config_class.option_names()
    build(DataConfig, values)  # validates
    config_class.from_options({k: v for k, v in values.items() if k in config_class.option_names()})
