"""Mistakes a user can make get one `llmclf: error:` line, exit 2, and nothing written;
checks run before any training (TF-IDF runs: seconds)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from llmclf.cli import main
from tests.conftest import make_texts


def table(path, splits, labels=None):
    texts, made = make_texts(len(splits), seed=3)
    frame = pd.DataFrame({"text": texts, "label": labels or made, "split": splits})
    frame.to_csv(path, index=False)
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("llmclf: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_label_only_in_the_test_split_is_refused_before_training(tmp_path, capsys):
    splits = ["train"] * 30 + ["test"] * 3
    labels = make_texts(30, seed=3)[1] + ["weather"] * 3
    data = table(tmp_path / "d.csv", splits, labels)
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data)]
    assert main([*args, "--output", str(tmp_path / "run")]) == 2
    assert "[test] (not in its training split)" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_missing_splits_are_said_in_the_summary_and_in_metrics(tmp_path, capsys):
    """3 rows of 3 classes without a split column: train keeps a row of every class, so
    nothing is left for validation or test."""
    texts, labels = make_texts(3, seed=3)
    data = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data)]
    assert main([*args, "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "no test rows" in out and "no validation rows" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any("no test metrics" in w for w in metrics["warnings"])
    assert "macro_f1" not in metrics


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    data = table(folder / "d.csv", ["train"] * 30 + ["validation"] * 6 + ["test"] * 6)
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data)]
    assert main([*args, "--output", str(folder / "run")]) == 0
    pd.DataFrame({"text": ["bank stock", "goal match"]}).to_csv(folder / "in.csv", index=False)
    return folder


@pytest.mark.parametrize("target, expected", [("x.csv", "is a folder"), ("f/out.csv", "is a file")])
def test_predict_output_paths_are_checked_first(tfidf_run, tmp_path, capsys, target, expected):
    (tmp_path / "x.csv").mkdir()
    (tmp_path / "f").write_text("a file")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["predict", str(tfidf_run / "run"), "--input", str(tfidf_run / "in.csv")]
    assert main([*args, "--output", str(tmp_path / target)]) == 2
    assert expected in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not list((tmp_path / "x.csv").iterdir())


def test_evaluate_output_onto_a_file_is_refused_before_evaluating(tfidf_run, tmp_path, capsys):
    (tmp_path / "taken").write_text("keep me")
    assert main(["evaluate", str(tfidf_run / "run"), "--output", str(tmp_path / "taken")]) == 2
    assert "is a file" in error_line(capsys)
    assert (tmp_path / "taken").read_text() == "keep me"


def test_an_abbreviated_flag_is_not_taken_for_another(tfidf_run, tmp_path, capsys):
    args = ["compare", str(tfidf_run / "run"), str(tfidf_run / "run"), "--output", "r"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--split-s", "1"])
    assert exit_.value.code == 2 and "unrecognized arguments: --split-s" in capsys.readouterr().err
