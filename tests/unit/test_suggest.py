"""`llmclf suggest`: uncertainty by hand, the diversity pick, and the command on a pool."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmclf import LlmclfError
from llmclf.cli import main
from llmclf.runs import load_classifier, suggest_texts
from llmclf.runs.suggest import diverse_pick, uncertainty_scores
from tests.conftest import make_texts


def test_uncertainties_by_hand():
    proba = np.array([[0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(uncertainty_scores(proba, "margin"), [0.7, 1.0, 0.0])
    np.testing.assert_allclose(uncertainty_scores(proba, "least-confident"), [0.6, 1.0, 0.0])
    entropy = -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1)) / np.log(3)
    np.testing.assert_allclose(uncertainty_scores(proba, "entropy"), [entropy, 1.0, 0.0], atol=1e-9)
    # multi-label: each label's closeness to its threshold, averaged
    multi = uncertainty_scores(np.array([[0.3, 1.0]]), thresholds=[0.3, 0.5])
    np.testing.assert_allclose(multi, [(1.0 + 0.0) / 2])


def test_the_pick_skips_near_duplicates_unless_diversity_is_zero():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    uncertainty = np.array([0.9, 0.89, 0.5, 0.4])
    assert diverse_pick(uncertainty, vectors, 2, diversity=0.0) == [0, 1]
    assert diverse_pick(uncertainty, vectors, 2, diversity=0.5) == [0, 3]
    assert diverse_pick(uncertainty, vectors, 9, diversity=0.5)[0] == 0
    assert sorted(diverse_pick(uncertainty, vectors, 9, diversity=0.5)) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suggest")
    texts, labels = make_texts(90, seed=1)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "d.csv", index=False)
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(folder / "d.csv")]
    assert main([*args, "--output", str(folder / "run")]) == 0
    return folder / "run"


def pool_file(folder, n=60):
    texts, _ = make_texts(n, seed=5)
    # half of them joined with another class's text: the uncertain ones; one empty row
    texts = [f"{t} {texts[(i + 1) % n]}" if i % 2 else t for i, t in enumerate(texts)]
    texts[7] = ""
    frame = pd.DataFrame({"id": range(n), "text": texts})
    frame.to_csv(folder / "pool.csv", index=False)
    return frame


def test_suggest_writes_the_most_uncertain_texts_streaming_or_not(run, tmp_path):
    frame = pool_file(tmp_path)
    out = tmp_path / "next.csv"
    args = ["suggest", str(run), "--pool", str(tmp_path / "pool.csv"), "--output", str(out)]
    assert main([*args, "-n", "10", "--diversity", "0", "--chunk-rows", "7"]) == 0
    got = pd.read_csv(out)
    assert got["suggest_rank"].tolist() == list(range(1, 11))
    # by hand: the 10 highest margins over the non-empty rows
    clf = load_classifier(run)
    kept = frame[frame["text"].astype(bool)]
    margin = uncertainty_scores(clf.predict_proba(kept["text"].tolist()), "margin")
    expected = kept["id"].to_numpy()[np.argsort(-margin, kind="stable")[:10]]
    assert sorted(got["id"]) == sorted(expected)
    assert (np.diff(got["uncertainty"]) <= 1e-12).all()
    assert {"prediction", "proba_money"} <= set(got.columns) and 7 not in set(got["id"])
    whole = tmp_path / "whole.csv"
    assert suggest_texts(run, tmp_path / "pool.csv", whole, number=10, diversity=0.0) == 10
    assert pd.read_csv(whole)["id"].tolist() == got["id"].tolist()


def test_diversity_spreads_the_suggestions(run, tmp_path):
    others = make_texts(40, seed=3)[0]
    mixed = [f"{a} {b}" for a, b in zip(others[:20], others[1:21])]
    margin = uncertainty_scores(load_classifier(run).predict_proba(mixed), "margin")
    texts = [mixed[int(np.argmax(margin))]] * 20 + others[20:]  # the most uncertain, 20 times
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "pool.csv", index=False)
    plain, diverse = tmp_path / "a.csv", tmp_path / "b.csv"
    suggest_texts(run, tmp_path / "pool.csv", plain, number=5, diversity=0.0)
    suggest_texts(run, tmp_path / "pool.csv", diverse, number=5, diversity=0.7)
    assert pd.read_csv(plain)["text"].nunique() == 1  # five copies of the most uncertain
    assert pd.read_csv(diverse)["text"].nunique() == 5


def test_bad_suggest_input_gets_one_line(run, tmp_path, capsys):
    pool_file(tmp_path)
    args = ["suggest", str(run), "--pool", str(tmp_path / "pool.csv")]
    assert main([*args, "--output", str(tmp_path), "-n", "3"]) != 0
    assert "use a .csv, .jsonl, .tsv or .parquet name" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "o.csv"), "--text-column", "body"]) != 0
    assert "body" in capsys.readouterr().err and not (tmp_path / "o.csv").exists()
    assert main([*args, "--output", str(tmp_path / "o.csv"), "--diversity", "1"]) != 0
    assert "--diversity must be in [0, 1)" in capsys.readouterr().err
    pd.DataFrame({"text": ["", " "]}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(LlmclfError, match="no text to suggest"):
        suggest_texts(run, tmp_path / "empty.csv", tmp_path / "o.csv")
