"""Selective prediction: the threshold search, the figures against hand computations, and
the withheld answer in predict, evaluate, the Python API and both server APIs."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from llmclf import LlmclfError
from llmclf.cli import main
from llmclf.evaluation.selective import (
    aurc,
    risk_coverage,
    selection,
    selective_metrics,
    threshold_for_coverage,
    threshold_for_precision,
)
from llmclf.labels import LabelSchema
from llmclf.methods.tfidf import TfidfClassifier
from llmclf.runs import load_classifier
from llmclf.serve import create_app
from tests.conftest import make_texts, write_split_csv
from tests.unit.test_serve import running

# -- the pure functions, by hand --------------------------------------------------------


def test_risk_coverage_and_aurc_by_hand():
    confidence = np.array([0.95, 0.9, 0.8, 0.6, 0.55])
    correct = np.array([True, False, True, True, False])
    coverage, risk = risk_coverage(confidence, correct)
    assert coverage.tolist() == [0.2, 0.4, 0.6, 0.8, 1.0]
    # errors among the k most confident: 0/1, 1/2, 1/3, 1/4, 2/5
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.25, 0.4])
    assert aurc(confidence, correct) == pytest.approx((0 + 0.5 + 1 / 3 + 0.25 + 0.4) / 5)
    # the order of the input does not matter
    order = [3, 0, 4, 1, 2]
    assert aurc(confidence[order], correct[order]) == pytest.approx(aurc(confidence, correct))


def test_tied_confidences_share_their_errors():
    # two answers at 0.9, one right one wrong: either order is as likely, so each place
    # carries half an error (risk 0.5 at k=1, 0.5 at k=2), not whichever the sort put first
    coverage, risk = risk_coverage(np.array([0.9, 0.9, 0.5]), np.array([True, False, True]))
    np.testing.assert_allclose(risk, [0.5, 0.5, 1 / 3])
    _, swapped = risk_coverage(np.array([0.9, 0.9, 0.5]), np.array([False, True, True]))
    np.testing.assert_allclose(swapped, risk)


def test_threshold_for_precision_keeps_the_most_coverage_that_reaches_it():
    confidence = np.array([0.99, 0.97, 0.9, 0.85, 0.7, 0.6])
    correct = np.array([True, True, False, True, True, False])
    # kept at each threshold: 1/1, 2/2, 2/3, 3/4, 4/5, 4/6 right
    assert threshold_for_precision(confidence, correct, 0.8) == 0.7  # 4/5 = 0.8
    assert threshold_for_precision(confidence, correct, 0.75) == 0.7
    assert threshold_for_precision(confidence, correct, 0.81) == 0.97  # 2/2 (3/4, 2/3 < .81)
    assert threshold_for_precision(confidence, np.zeros(6, bool), 0.5) is None
    assert threshold_for_coverage(confidence, 0.5) == 0.9  # keeps 3 of 6
    assert threshold_for_coverage(confidence, 1.0) == 0.6
    assert threshold_for_coverage(confidence, 0.01) == 0.99  # at least one answer


def test_the_lower_bound_asks_the_interval_not_the_share_to_reach_the_target():
    confidence = 1 - 0.01 * np.arange(1, 16)  # 0.99, 0.98, ..., 0.85
    correct = np.array([True] * 11 + [False] * 4)
    # the share right reaches 0.7 at every threshold: 11/15 = 0.733 at the lowest, 0.85
    assert threshold_for_precision(confidence, correct, 0.7) == pytest.approx(0.85)
    # the lower end of the two-sided 95 % Clopper–Pearson interval of k right of n kept is
    # beta.ppf(0.025, k, n - k + 1): 11 of 11 gives 0.025 ** (1 / 11) = 0.715 >= 0.7; one
    # wrong answer more and it falls below the target, and stays there
    lows = [beta.ppf(0.025, 11, n - 11 + 1) for n in range(11, 16)]
    assert lows[0] == pytest.approx(0.025 ** (1 / 11)) and lows[0] >= 0.7
    assert all(low < 0.7 for low in lows[1:])
    chosen = threshold_for_precision(confidence, correct, 0.7, bound="lower")
    assert chosen == pytest.approx(0.89)  # the 11th most confident: 11 of 11 right
    # the bound is the interval metrics.json reports for the kept answers
    assert selection(confidence, correct, chosen).accuracy_interval()[0] == pytest.approx(lows[0])
    # ten of ten right is not enough: 0.025 ** (1 / 10) = 0.692
    assert threshold_for_precision(confidence[:10], correct[:10], 0.7, bound="lower") is None
    assert threshold_for_precision(confidence[:10], correct[:10], 0.7) == pytest.approx(0.9)


def test_selective_metrics_by_hand_single_and_multi_label():
    truth = np.array([0, 1, 2, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.3, 0.6, 0.1]])
    decided = proba.argmax(axis=1)  # 0, 1, 0 (wrong), 1
    m = selective_metrics(truth, proba, decided, threshold=0.55)
    assert m["coverage"] == 0.75 and m["selective_accuracy"] == 1.0
    assert m["selective_f1"] == 1.0  # classes 0 and 1, all right
    # sorted: .8 ok, .7 ok, .6 ok, .5 wrong -> risks 0, 0, 0, 1/4
    assert m["aurc"] == pytest.approx(0.25 / 4)
    assert m["coverage_at_precision"]["0.95"] == 0.75
    assert "coverage" not in selective_metrics(truth, proba, decided)
    # multi-label: one decision per cell, its confidence the decided outcome's probability
    truth = np.array([[1, 0], [0, 1]])
    proba = np.array([[0.9, 0.45], [0.3, 0.8]])
    decided = (proba >= 0.5).astype(int)  # [[1, 0], [0, 1]]: all right
    m = selective_metrics(truth, proba, decided, threshold=[0.6, 0.6])
    # cell confidences .9, .55, .7, .8: the .55 one is withheld
    assert m["coverage"] == 0.75 and m["coverage_per_label"] == [1.0, 0.5]
    assert m["selective_f1"] == 1.0


def test_label_schema_abstains_and_keeps_its_threshold(tmp_path):
    schema = LabelSchema(["a", "b"]).with_abstention(0.7)
    assert schema.abstains(np.array([[0.9, 0.1], [0.4, 0.6]])).tolist() == [False, True]
    schema.save(tmp_path)
    assert LabelSchema.load(tmp_path).abstain_below == 0.7
    with pytest.raises(LlmclfError, match="one abstention threshold per label"):
        schema.with_abstention([0.5, 0.6])
    multi = LabelSchema(["a", "b", "c"], multi_label=True).with_abstention([0.6, 0.9, 0.6])
    withheld = multi.abstains(np.array([[0.8, 0.85, 0.5]]))
    assert withheld.tolist() == [[False, True, True]]  # 0.85 < 0.9; 1 - 0.5 < 0.6


# -- a run that abstains ----------------------------------------------------------------


def noisy(n: int, seed: int, mixed: float = 0.3):
    """Texts of which ``mixed`` join two classes' words under either label at random: a
    classifier unsure of those, and wrong on about half of them."""
    texts, labels = make_texts(2 * n, seed=seed)
    rng = np.random.default_rng(seed)
    out_texts, out_labels = [], []
    for i in range(n):
        j = (i + 1 + rng.integers(2)) % n  # another class, make_texts cycles them
        if rng.random() < mixed and labels[j] != labels[i]:
            out_texts.append(f"{texts[i]} {texts[n + j]}")
            out_labels.append(labels[i] if rng.random() < 0.5 else labels[n + j])
        else:
            out_texts.append(texts[i])
            out_labels.append(labels[i])
    return out_texts, out_labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("abstain")
    write_split_csv(folder / "d.csv", noisy)
    return folder


@pytest.fixture(scope="module")
def run(data):
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data / "d.csv")]
    assert main([*args, "--target-precision", "0.9", "--output", str(data / "run")]) == 0
    return data / "run"


def test_a_target_precision_is_met_on_validation_and_recorded(run):
    threshold = json.loads((run / "labels.json").read_text())["abstain_below"]
    metrics = json.loads((run / "metrics.json").read_text())
    chosen = metrics["abstention"]
    assert chosen["threshold"] == threshold and chosen["chosen_by"] == "target precision 0.9"
    assert chosen["validation"]["selective_accuracy"] >= 0.9
    assert 0 < chosen["validation"]["coverage"] < 1
    # the test figures: at the run's threshold, against a hand count of the stored table
    table = pd.read_json(run / "test_predictions.jsonl", lines=True)
    proba = table[[c for c in table if c.startswith("proba_")]].to_numpy()
    kept = proba.max(axis=1) >= threshold
    assert table["abstained"].tolist() == (~kept).tolist()
    assert (table.loc[~kept, "prediction"] == "").all()
    top = np.array(sorted(set(table["label"])))[proba.argmax(axis=1)]
    assert metrics["selective"]["coverage"] == pytest.approx(kept.mean())
    expected = (top[kept] == table["label"].to_numpy()[kept]).mean()
    assert metrics["selective"]["selective_accuracy"] == pytest.approx(expected)
    # the headline figures stay those of every answer given
    assert metrics["accuracy"] == pytest.approx((top == table["label"].to_numpy()).mean())


def test_the_python_api_withholds_and_set_abstention_changes_it(run):
    clf = load_classifier(run)
    texts, _ = noisy(40, seed=9)
    proba = clf.predict_proba(texts)
    withheld = clf.abstained(proba)
    assert withheld.any() and not withheld.all()
    predicted = clf.predict(texts)
    assert [p is None for p in predicted] == withheld.tolist()
    assert clf.predict(texts[int(np.argmax(withheld))]) is None  # one text, one answer
    assert None not in clf.set_abstention(None).predict(texts)
    with pytest.raises(LlmclfError, match="is a probability, not 1.5"):
        clf.set_abstention(1.5)


def test_predict_and_evaluate_take_a_new_threshold(run, data, tmp_path):
    texts, _ = noisy(30, seed=5)
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    args = ["predict", str(run), "--input", str(tmp_path / "in.csv"), "--output", str(out)]
    assert main([*args, "--abstain-below", "0.99"]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert table["abstained"].all() and (table["prediction"] == "").all()
    assert (
        main(["evaluate", str(run), "--abstain-below", "0.34", "--output", str(tmp_path / "e")])
        == 0
    )
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["selective"]["threshold"] == 0.34
    assert (
        metrics["selective"]["coverage"]
        > json.loads((run / "metrics.json").read_text())["selective"]["coverage"]
    )


def test_both_server_apis_mark_withheld_answers(run):
    clf = load_classifier(run)
    texts, _ = noisy(12, seed=7)
    withheld = clf.abstained(clf.predict_proba(texts)).tolist()
    assert any(withheld) and not all(withheld)
    with running(create_app({"r": clf})) as url:
        body = httpx.post(url + "/v1/classify", json={"input": texts}, timeout=30).json()
        assert [row["abstained"] for row in body["data"]] == withheld
        assert [row["label"] is None for row in body["data"]] == withheld
        tei = httpx.post(url + "/predict", json={"inputs": texts}, timeout=30).json()
        assert [answer[0].get("abstained") for answer in tei] == withheld
        assert all("abstained" not in entry for answer in tei for entry in answer[1:])


def test_multi_label_runs_abstain_per_label(tmp_path):
    texts, labels = make_texts(120, seed=4)
    multi = [[lab, "x"] if i % 3 else [lab] for i, lab in enumerate(labels)]
    clf = TfidfClassifier(min_df=1, target_coverage=0.8)
    clf.fit(texts[:80], multi[:80], eval_set=(texts[80:], multi[80:]))
    assert len(clf.schema_.abstain_below) == 4  # one per label
    assert clf.abstention_["validation"]["coverage"] >= 0.8
    proba = clf.predict_proba(texts[80:])
    withheld = clf.abstained(proba)
    assert withheld.shape == (40, 4)
    for row, off, answer in zip(proba, withheld, clf.predict(texts[80:])):
        decided = {c for c, p, t in zip(clf.classes_, row, clf.schema_.thresholds) if p >= t}
        assert set(answer) == {c for c, o in zip(clf.classes_, off) if not o} & decided


def test_bad_abstention_options_get_one_line(data, capsys):
    base = [
        "train",
        "--method",
        "tfidf",
        "--data",
        str(data / "d.csv"),
        "--output",
        str(data / "never"),
    ]
    assert main([*base, "--target-precision", "0.9", "--abstain-below", "0.5"]) != 0
    assert "both set the abstention threshold" in capsys.readouterr().err
    assert main([*base, "--target-coverage", "0"]) != 0
    assert "--target-coverage must be more than 0" in capsys.readouterr().err
    texts, labels = make_texts(30)
    with pytest.raises(LlmclfError, match="there is none"):
        TfidfClassifier(min_df=1, target_precision=0.9).fit(texts, labels)


def test_the_precision_bound_needs_a_target_precision(data, capsys):
    base = ["train", "--method", "tfidf", "--data", str(data / "d.csv")]
    base += ["--output", str(data / "never"), "--precision-bound", "lower"]
    for extra in ([], ["--target-coverage", "0.8"], ["--abstain-below", "0.5"]):
        assert main([*base, *extra]) != 0
        err = capsys.readouterr().err
        assert "give --target-precision too" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert main(["calibrate", str(data / "never"), "--precision-bound", "lower"]) != 0
    assert "give --target-precision too" in capsys.readouterr().err
    texts, labels = make_texts(30)
    with pytest.raises(LlmclfError, match="give --target-precision too"):
        TfidfClassifier(min_df=1, precision_bound="lower").fit(texts, labels)
    assert not (data / "never").exists()


def test_the_lower_bound_answers_less_and_is_recorded(data, tmp_path):
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data / "d.csv")]
    args += ["--target-precision", "0.8"]
    assert main([*args, "--output", str(tmp_path / "estimate")]) == 0
    assert main([*args, "--precision-bound", "lower", "--output", str(tmp_path / "lower")]) == 0
    estimate, lower = (
        json.loads((tmp_path / name / "metrics.json").read_text())["abstention"]
        for name in ("estimate", "lower")
    )
    assert estimate["precision_bound"] == "estimate" and lower["precision_bound"] == "lower"
    assert lower["threshold"] > estimate["threshold"]  # these data: the bound costs coverage
    assert lower["validation"]["coverage"] < estimate["validation"]["coverage"]
    low, _ = lower["validation"]["selective_accuracy_95ci"]
    assert low >= 0.8 > estimate["validation"]["selective_accuracy_95ci"][0]
    stored_threshold = json.loads((tmp_path / "lower" / "labels.json").read_text())
    assert stored_threshold["abstain_below"] == lower["threshold"]
    # calibrate chooses it again at the new temperature by the run's own bound
    assert main(["calibrate", str(tmp_path / "lower")]) == 0
    stored = json.loads((tmp_path / "lower" / "calibration.json").read_text())["abstention"]
    assert stored["precision_bound"] == "lower"
    assert stored["validation"]["selective_accuracy_95ci"][0] >= 0.8
    # and the Python API takes it as a keyword
    clf = load_classifier(tmp_path / "estimate")
    val = pd.read_csv(data / "d.csv").query("split == 'validation'")
    clf.choose_abstention(val["text"], val["label"], precision=0.8, precision_bound="lower")
    assert clf.abstention_["precision_bound"] == "lower"
    assert clf.schema_.abstain_below >= estimate["threshold"]
    with pytest.raises(LlmclfError, match="give --target-precision too"):
        clf.choose_abstention(val["text"], val["label"], coverage=0.8, precision_bound="lower")


def test_calibrate_chooses_a_threshold_at_the_new_temperature(data, tmp_path):
    args = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data / "d.csv")]
    assert main([*args, "--output", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "labels.json").read_text())["abstain_below"] is None
    assert main(["calibrate", str(tmp_path / "r"), "--target-coverage", "0.5"]) == 0
    stored = json.loads((tmp_path / "r" / "calibration.json").read_text())
    assert stored["abstention"]["validation"]["coverage"] >= 0.5
    clf = load_classifier(tmp_path / "r")
    assert clf.schema_.abstain_below == stored["abstention"]["threshold"]
    assert clf.temperature_ == stored["temperature"]


def test_a_precision_resting_on_few_texts_is_warned_about(caplog):
    texts, labels = noisy(150, seed=1)
    val_texts, val_labels = noisy(30, seed=2)
    clf = TfidfClassifier(min_df=1, target_precision=0.9)
    with caplog.at_level("WARNING", logger="llmclf"):
        clf.fit(texts, labels, eval_set=(val_texts, val_labels))
    low, high = clf.abstention_["validation"]["selective_accuracy_95ci"]
    assert low < 0.9 <= clf.abstention_["validation"]["selective_accuracy"] <= high
    assert "may fall below the target 0.9" in caplog.text


def test_a_target_nothing_reaches_answers_only_what_is_certain(caplog):
    texts, labels = make_texts(90, seed=1)
    val_texts, val_labels = make_texts(30, seed=2)
    rotate = {"sport": "money", "money": "tech", "tech": "sport"}
    val_labels = [rotate[lab] for lab in val_labels]  # every answer wrong on validation
    clf = TfidfClassifier(min_df=1, target_precision=0.5)
    with caplog.at_level("WARNING", logger="llmclf"):
        clf.fit(texts, labels, eval_set=(val_texts, val_labels))
    assert clf.schema_.abstain_below == 1.0 and "no threshold reaches precision" in caplog.text
    assert clf.abstained(clf.predict_proba(val_texts)).all()
