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
    proba = clf.predict_proba(EXPECTED["texts"])
    np.testing.assert_allclose(proba, np.array(expected["proba"]), atol=1e-5)
    assert list(clf.predict(EXPECTED["texts"])) == expected["predict"]


def test_release_run_predicts_through_the_cli(release):
    from llmclf.cli import main

    pd.DataFrame({"text": EXPECTED["texts"]}).to_csv("texts.csv", index=False)
    assert main(["predict", "head", "--input", "texts.csv", "--output", "out.csv"]) == 0
    out = pd.read_csv("out.csv")
    assert list(out["prediction"]) == EXPECTED["runs"]["head"]["predict"]
