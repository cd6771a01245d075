"""Hierarchical labels (--label-hierarchy): the per-level figures and the parents of
withheld answers against hand computations, the schema's refusals, and the parent in
train, evaluate, predict, the Python API and both server APIs."""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import pandas as pd
import pytest

from llmclf import LlmclfError
from llmclf.cli import main
from llmclf.evaluation.hierarchy import (
    ancestor_masses,
    deepest_sure,
    level_metrics,
    parent_answers,
    parent_figures,
    parent_threshold_for_precision,
    prefix,
)
from llmclf.evaluation.metrics import classification_metrics
from llmclf.labels import NO_CLASS, LabelSchema
from llmclf.methods.tfidf import TfidfClassifier
from llmclf.runs import load_classifier
from llmclf.serve import create_app
from tests.conftest import write_split_csv
from tests.unit.test_serve import running

# -- the pure functions, by hand --------------------------------------------------------


def test_level_metrics_by_hand():
    classes = ["news/politics", "news/sport/golf", "news/sport/tennis", "tech"]
    gold = ["news/sport/golf", "news/sport/tennis", "news/politics", "tech", "tech"]
    guess = ["news/sport/tennis", "news/sport/tennis", "news/sport/golf", "tech", None]
    one, two = level_metrics(gold, guess, classes, "/")
    # level 1: news news news tech tech vs news news news tech "" -> 4/5 right;
    # F1(news) = 1, F1(tech) = 2*1*0.5/1.5 = 2/3
    assert one == {"level": 1, "groups": 2, "accuracy": 0.8, "macro_f1": pytest.approx(5 / 6)}
    # level 2: news/sport news/sport news/politics tech tech vs news/sport news/sport
    # news/sport tech "": 3/5 right; F1 news/politics 0, news/sport 2*(2/3)*1/(5/3) = 0.8,
    # tech 2/3
    assert two["groups"] == 3 and two["accuracy"] == pytest.approx(0.6)
    assert two["macro_f1"] == pytest.approx((0 + 0.8 + 2 / 3) / 3)
    # level 3 is the classes themselves: not repeated
    assert len(level_metrics(gold, guess, classes, "/")) == 2
    assert level_metrics(["a", "b"], ["a", "a"], ["a", "b"], "/") == []
    assert prefix("tech", 2, "/") == "tech"


def test_classification_metrics_add_levels_and_count_no_class_wrong():
    classes = ["a/x", "a/y", "b/z"]
    figures = classification_metrics(
        np.array([0, 1, 2, 2]), np.array([1, 1, 2, NO_CLASS]), classes, "/"
    )
    assert figures["levels"][0]["accuracy"] == 0.75  # a a b b vs a a b -
    assert "levels" not in classification_metrics(np.array([0, 1]), np.array([0, 1]), classes)


def test_parent_answers_take_the_deepest_sure_parent():
    classes = ["a/b/x", "a/b/y", "a/c", "d"]
    proba = np.array(
        [
            [0.50, 0.45, 0.02, 0.03],  # a/b holds 0.95
            [0.40, 0.10, 0.42, 0.08],  # a/b 0.5, a 0.92
            [0.30, 0.10, 0.20, 0.40],  # decided d: no parent
            [0.35, 0.05, 0.30, 0.30],  # a/b 0.4, a 0.7: none sure at 0.9
        ]
    )
    decided = np.array([0, 2, 3, 0])
    assert parent_answers(proba, decided, classes, "/", 0.9) == ["a/b", "a", "", ""]
    assert parent_answers(proba, np.array([NO_CLASS] * 4), classes, "/", 0.1) == [""] * 4
    figures = parent_figures(
        ["a/b/y", "a/c", "d", "d"], ["a/b", "a/b", None, None], [1, 1, 1, 0], "/"
    )
    assert figures == {"withheld": 3, "with_parent": 2 / 3, "parent_accuracy": 0.5}


def test_the_parent_threshold_is_the_lowest_whose_parents_reach_the_target():
    classes = ["a/b/x", "a/b/y", "a/c", "d"]
    proba = np.array(
        [
            [0.50, 0.40, 0.05, 0.05],  # a/b 0.90, a 0.95
            [0.45, 0.30, 0.15, 0.10],  # a/b 0.75, a 0.90
            [0.40, 0.20, 0.10, 0.30],  # a/b 0.60, a 0.70
            [0.30, 0.25, 0.20, 0.25],  # a/b 0.55, a 0.75
        ]
    )
    decided = np.zeros(4, dtype=int)  # a/b/x each time
    masses = ancestor_masses(proba, decided, classes, "/")
    np.testing.assert_allclose(masses, [[0.95, 0.9], [0.9, 0.75], [0.7, 0.6], [0.75, 0.55]])
    assert deepest_sure(masses, np.array([0.9, 0.6])).tolist() == [[2, 1, 0, 0], [2, 2, 2, 1]]
    # gold: a/b/y (a and a/b right), a/c (a right, a/b wrong), d (both wrong), a/c
    gold = np.array([1, 2, 3, 2])
    # candidates from the top, each row at its deepest sure parent: 0.95 (row 0 at a:
    # 1/1), 0.9 (row 0 at a/b, row 1 at a: 2/2), 0.75 (rows 0, 1 at a/b, row 3 at a: 2/3),
    # 0.7 (+ row 2 at a: 2/4), 0.6 (row 2 at a/b: 2/4), 0.55 (row 3 at a/b: 1/4)
    assert parent_threshold_for_precision(proba, decided, gold, classes, "/", 0.6) == pytest.approx(
        0.75
    )
    assert parent_threshold_for_precision(proba, decided, gold, classes, "/", 0.4) == pytest.approx(
        0.6
    )
    assert parent_threshold_for_precision(proba, decided, gold, classes, "/", 1.0) == pytest.approx(
        0.9
    )
    # the lower end of the interval: one right parent in one is far from 0.5
    assert parent_threshold_for_precision(proba, decided, gold, classes, "/", 0.5, "lower") is None
    flat = np.array([[0.4, 0.6]])  # decided b: no parent to give
    assert (
        parent_threshold_for_precision(flat, np.array([1]), np.array([1]), ["a/x", "b"], "/", 0.5)
        is None
    )


def test_the_schema_refuses_what_is_no_hierarchy_and_keeps_one(tmp_path):
    schema = LabelSchema(["sport/golf", "sport/tennis", "tech"])
    with pytest.raises(LlmclfError, match="no class contains '.'"):
        schema.with_hierarchy(".")
    with pytest.raises(LlmclfError, match="is multi-label: drop --label-hierarchy"):
        LabelSchema(["a/x", "b"], multi_label=True).with_hierarchy("/")
    with pytest.raises(LlmclfError, match="'a//x' has an empty level"):
        LabelSchema(["a//x", "b/y"]).with_hierarchy("/")
    schema.with_hierarchy("/").with_abstention(0.8).save(tmp_path)
    loaded = LabelSchema.load(tmp_path)
    assert loaded.hierarchy == "/" and loaded.abstain_below == 0.8
    proba = np.array([[0.5, 0.45, 0.05], [0.9, 0.05, 0.05], [0.3, 0.3, 0.4]])
    # the first is withheld with a sure parent, the second answered, the third unsure
    assert loaded.parents(proba) == ["sport", None, None]
    assert schema.parents(proba) == [None, None, None]  # no hierarchy, no threshold
    # a parent threshold of its own; a new abstention threshold drops it
    stricter = loaded.with_parent_threshold(0.97)
    assert stricter.parents(proba) == [None, None, None]
    assert stricter.with_abstention(0.8).parent_below is None


# -- a run with a hierarchy ---------------------------------------------------------------

WORDS = {
    "sport": "match goal team coach score league season player",
    "tech": "chip code server laptop network software cloud data",
}


def texts_of(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Two parents told apart by their words; under each, two children told apart only by
    a marker word that is right two times in three: sure of the parent, not the child."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        parent = ("sport", "tech")[i % 2]
        child = ("north", "south")[(i // 2) % 2]
        other = "south" if child == "north" else "north"
        words = [rng.choice(WORDS[parent].split()) for _ in range(rng.randint(4, 9))]
        words.append(child if rng.random() < 0.67 else other)
        texts.append(" ".join(words))
        labels.append(f"{parent}/{child}")
    return texts, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hierarchy")
    sizes = (("train", 160, 1), ("validation", 80, 2), ("test", 80, 3))
    write_split_csv(folder / "d.csv", texts_of, sizes)
    return folder


@pytest.fixture(scope="module")
def run(data):
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data / "d.csv")]
    args += ["--label-hierarchy", "/", "--abstain-below", "0.8", "--output", str(data / "run")]
    assert main(args) == 0
    return data / "run"


def test_a_run_reports_levels_and_parents_as_computed_by_hand(run):
    metrics = json.loads((run / "metrics.json").read_text())
    table = pd.read_json(run / "test_predictions.jsonl", lines=True)
    classes = sorted(set(table["label"]))
    proba = table[[f"proba_{c}" for c in classes]].to_numpy()
    top = np.array(classes)[proba.argmax(axis=1)]
    gold = table["label"].to_numpy()
    parent_of = np.array([c.split("/")[0] for c in classes])
    right_parent = parent_of[proba.argmax(axis=1)] == np.array([g.split("/")[0] for g in gold])
    (level,) = metrics["levels"]
    assert level["groups"] == 2 and level["accuracy"] == pytest.approx(right_parent.mean())
    assert level["accuracy"] > metrics["accuracy"]  # surer of the parent than of the child
    # a withheld answer (top < 0.8) names its parent where the parent's classes hold 0.8
    withheld = proba.max(axis=1) < 0.8
    assert table["abstained"].tolist() == withheld.tolist() and withheld.any()
    mass = np.array(
        [proba[i, parent_of == parent_of[j]].sum() for i, j in enumerate(proba.argmax(1))]
    )
    expected = np.where(withheld & (mass >= 0.8), np.array([t.split("/")[0] for t in top]), "")
    assert table["parent"].fillna("").tolist() == expected.tolist()
    given = expected != ""
    assert given.any()
    parents = metrics["selective"]["parents"]
    assert parents["withheld"] == withheld.sum()
    assert parents["with_parent"] == pytest.approx(given.sum() / withheld.sum())
    assert parents["parent_accuracy"] == pytest.approx(right_parent[given].mean())


def test_a_target_precision_chooses_the_parents_threshold_too(data, tmp_path):
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data / "d.csv")]
    args += ["--label-hierarchy", "/", "--target-precision", "0.9", "--output", str(tmp_path)]
    assert main(args) == 0
    schema = json.loads((tmp_path / "labels.json").read_text())
    chosen = json.loads((tmp_path / "metrics.json").read_text())["abstention"]
    assert chosen["parent_threshold"] == schema["parent_below"] != schema["abstain_below"]
    parents = chosen["validation"]["parents"]
    assert parents["with_parent"] > 0 and parents["parent_accuracy"] >= 0.9
    # by hand on the validation split: the parents at that threshold reach the target
    clf = load_classifier(tmp_path)
    validation = pd.read_csv(data / "d.csv").query("split == 'validation'")
    proba = clf.predict_proba(validation["text"].tolist())
    given = [(g, p) for g, p in zip(validation["label"], clf.parent_labels(proba)) if p]
    assert given and sum(g.startswith(p + "/") for g, p in given) >= 0.9 * len(given)


def test_python_api_and_predict_give_the_parent(run, data, tmp_path):
    clf = load_classifier(run)
    texts, _ = texts_of(24, seed=8)
    proba = clf.predict_proba(texts)
    parents = clf.parent_labels(proba)
    withheld = clf.abstained(proba)
    assert all(p is None for p, off in zip(parents, withheld) if not off)
    assert any(p in ("sport", "tech") for p in parents)
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    assert (
        main(["predict", str(run), "--input", str(tmp_path / "in.csv"), "--output", str(out)]) == 0
    )
    table = pd.read_csv(out, keep_default_na=False)
    assert table["parent"].tolist() == [p or "" for p in parents]


def test_both_server_apis_carry_the_parent(run):
    clf = load_classifier(run)
    texts, _ = texts_of(12, seed=7)
    parents = clf.parent_labels(clf.predict_proba(texts))
    assert any(parents)
    with running(create_app({"r": clf})) as url:
        body = httpx.post(url + "/v1/classify", json={"input": texts}, timeout=30).json()
        assert [row.get("parent") for row in body["data"]] == parents
        tei = httpx.post(url + "/predict", json={"inputs": texts}, timeout=30).json()
        assert [answer[0].get("parent") for answer in tei] == parents
        assert all("parent" not in entry for answer in tei for entry in answer[1:])


def test_evaluate_and_compare_read_a_flat_run_as_a_hierarchy(run, data, tmp_path):
    base = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data / "d.csv")]
    assert main([*base, "--output", str(tmp_path / "flat")]) == 0
    flat = json.loads((tmp_path / "flat" / "metrics.json").read_text())
    assert "levels" not in flat
    out = tmp_path / "e"
    assert (
        main(["evaluate", str(tmp_path / "flat"), "--label-hierarchy", "/", "--output", str(out)])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["levels"][0]["groups"] == 2
    assert metrics["accuracy"] == pytest.approx(flat["accuracy"])  # the decision is unchanged
    # compare reads every run as a hierarchy: a per-level column beside each run's figures
    report = tmp_path / "report"
    args = ["compare", str(tmp_path / "flat"), str(run), "--output", str(report)]
    assert main([*args, "--label-hierarchy", "/"]) == 0
    rows = json.loads((report / "report.json").read_text())["runs"]
    assert [row["levels"][0]["accuracy"] for row in rows] == pytest.approx(
        [
            metrics["levels"][0]["accuracy"],
            json.loads((run / "metrics.json").read_text())["levels"][0]["accuracy"],
        ]
    )
    assert "level 1 macro-F1" in (report / "report.md").read_text()


def test_a_separator_the_labels_do_not_use_fails_before_training(data, tmp_path, capsys):
    args = ["train", "--method", "tfidf", "--data", str(data / "d.csv")]
    assert main([*args, "--label-hierarchy", ".", "--output", str(tmp_path / "never")]) != 0
    assert "no class contains '.'" in capsys.readouterr().err
    assert not (tmp_path / "never" / "metrics.json").exists()
    texts, labels = texts_of(40, seed=1)
    with pytest.raises(LlmclfError, match="no class contains ':'"):
        TfidfClassifier(min_df=1, label_hierarchy=":").fit(texts, labels)
