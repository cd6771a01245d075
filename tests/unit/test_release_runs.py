"""Run folders written by llmclf 0.1.0 (tests/fixtures/release-0.1.0, made by
tests/fixtures/make_release_runs.py before the package was restructured) load with the
current code and give the same probabilities and predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "release-0.1.0"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture()
def release(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture as the working directory (runs name their bases relatively)."""
    folder = tmp_path / "release"
    shutil.copytree(FIXTURE, folder)
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("name", sorted(EXPECTED["runs"]))
def test_release_run_gives_the_same_probabilities(release, name):
    from llmclf.runs import load_classifier

    expected = EXPECTED["runs"][name]
    clf = load_classifier(name, progress=False)
    assert list(clf.classes_) == expected["classes"]
    long_text = getattr(clf.config_, "long_text", None)  # tfidf has none
    assert long_text is None or long_text.long_text == "truncate"  # before --long-text
    proba = clf.predict_proba(EXPECTED["texts"])
    np.testing.assert_allclose(proba, np.array(expected["proba"]), atol=1e-5)
    assert list(clf.predict(EXPECTED["texts"])) == expected["predict"]


def test_release_run_predicts_through_the_cli(release):
    from llmclf.cli import main

    pd.DataFrame({"text": EXPECTED["texts"]}).to_csv("texts.csv", index=False)
    assert main(["predict", "head", "--input", "texts.csv", "--output", "out.csv"]) == 0
    out = pd.read_csv("out.csv")
    assert list(out["prediction"]) == EXPECTED["runs"]["head"]["predict"]


@pytest.mark.parametrize(
    "name, damaged",
    [
        ("head", "adapter_model.safetensors"),
        ("head-frozen", "head.safetensors"),
        ("encoder", "model.safetensors"),
        ("tfidf", "pipeline.skops"),
    ],
)
def test_a_truncated_model_file_is_named_as_damage(release, capsys, name, damaged):
    from llmclf.cli import main

    path = release / name / damaged
    path.write_bytes(path.read_bytes()[:100])
    pd.DataFrame({"text": EXPECTED["texts"]}).to_csv("texts.csv", index=False)
    assert main(["predict", name, "--input", "texts.csv", "--output", "out.csv"]) == 2
    err = capsys.readouterr().err
    assert f"{name} is damaged" in err and "Traceback" not in err
    assert not Path("out.csv").exists()


@pytest.mark.parametrize("damaged", ["labels.json", "config.yaml", "calibration.json"])
def test_a_garbled_metadata_file_gives_one_line(release, capsys, damaged):
    from llmclf.cli import main

    (release / "head" / damaged).write_text("{not: [valid")
    assert main(["evaluate", "head", "--output", "ev"]) == 2
    err = capsys.readouterr().err
    assert err.count("llmclf: error:") == 1 and "Traceback" not in err
    assert not Path("ev").exists()


def test_a_data_file_where_the_run_goes_is_named_as_such(release, capsys):
    from llmclf.cli import main

    assert main(["evaluate", "data.csv"]) == 2
    assert "data.csv is a file, not a run folder" in capsys.readouterr().err


def _relabel(folder: Path, classes: list[str]) -> None:
    labels = json.loads((folder / "labels.json").read_text())
    (folder / "labels.json").write_text(json.dumps({**labels, "classes": classes}))


def _drop(folder: Path, name: str) -> None:
    (folder / name).unlink()


def _garble(folder: Path, name: str) -> None:
    (folder / name).write_text('{"template": "half')


DAMAGES = [
    (
        "head",
        lambda f: _drop(f, "adapter_model.safetensors"),
        "adapter_model.safetensors is missing",
    ),
    ("head", lambda f: _drop(f, "adapter_config.json"), "adapter_config.json is missing"),
    ("head", lambda f: _garble(f, "adapter_config.json"), "adapter_config.json is not valid JSON"),
    (
        "head",
        lambda f: _relabel(f, ["a", "b", "c", "d"]),
        "adapter_model.safetensors has base_model.model.score.weight of shape [3, 64], but labels.json names 4",
    ),
    ("head", lambda f: _drop(f, "tokenizer_config.json"), "tokenizer_config.json is missing"),
    ("head", lambda f: _garble(f, "tokenizer.json"), "tokenizer.json is not valid JSON"),
    (
        "head-frozen",
        lambda f: _relabel(f, ["a", "b"]),
        "head.safetensors has score.weight of shape [3, 64], but labels.json names 2",
    ),
    ("instruct", lambda f: _garble(f, "instruct.json"), "instruct.json is not valid JSON"),
    (
        "instruct",
        lambda f: _relabel(f, ["money", "sport", "weather"]),
        "instruct.json has no answer for weather",
    ),
    (
        "instruct",
        lambda f: _drop(f, "adapter_model.safetensors"),
        "adapter_model.safetensors is missing",
    ),
    ("encoder", lambda f: _relabel(f, ["a", "b"]), "config.json does not name the 2 classes"),
    ("encoder", lambda f: _drop(f, "model.safetensors"), "model.safetensors is missing"),
    ("tfidf", lambda f: _drop(f, "pipeline.skops"), "pipeline.skops is missing"),
]


@pytest.mark.parametrize("name, damage, expected", DAMAGES)
def test_a_damaged_run_is_named_before_any_model_loads(
    release, capsys, monkeypatch, name, damage, expected
):
    """Each damage gets 'RUN is damaged: FILE ...' in one line, found by the run-folder
    check: the model loaders are never reached."""
    from llmclf.cli import main
    from llmclf.methods.registry import method_classes

    for cls in method_classes().values():
        monkeypatch.setattr(cls, "_load_model", lambda self, folder: pytest.fail("loaded a model"))
    damage(release / name)
    pd.DataFrame({"text": EXPECTED["texts"]}).to_csv("texts.csv", index=False)
    assert main(["predict", name, "--input", "texts.csv", "--output", "out.csv"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llmclf: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{name} is damaged: {expected}" in lines[0]
    assert "train it again or restore" in lines[0]
    assert not Path("out.csv").exists()
