import json

import numpy as np
import pandas as pd
import pytest

from llmclf import LlmclfError
from llmclf.cli import main
from llmclf.methods.tfidf import PIPELINE_FILE, TfidfClassifier
from tests.conftest import make_texts


def multi_label_texts(n: int, seed: int):
    base_texts, base_labels = make_texts(2 * n, seed=seed)
    texts, labels = [], []
    for i in range(0, 2 * n, 2):
        if i % 4 == 0:
            texts.append(base_texts[i] + " " + base_texts[i + 1])
            labels.append(sorted({base_labels[i], base_labels[i + 1]}))
        else:
            texts.append(base_texts[i])
            labels.append([base_labels[i]])
    return texts, labels


def test_single_label_matches_scikit_learn_and_counts_coefficients():
    texts, labels = make_texts(90)
    clf = TfidfClassifier(min_df=1).fit(texts, labels)
    test_texts, test_labels = make_texts(30, seed=1)
    proba = clf.predict_proba(test_texts)
    assert np.allclose(proba, clf.pipeline_.predict_proba(test_texts), atol=1e-6)
    assert clf.score(test_texts, test_labels) > 0.9
    assert clf.predict(test_texts[0]) in {"money", "sport", "tech"}
    logreg = clf.pipeline_.named_steps["logreg"]
    assert clf.trainable_params_ == logreg.coef_.size + logreg.intercept_.size
    assert logreg.coef_.shape == (3, clf.vocabulary_size_)


def test_two_classes_give_two_probability_columns():
    texts, labels = make_texts(60, classes=("sport", "money"))
    clf = TfidfClassifier(min_df=1).fit(texts, labels)
    proba = clf.predict_proba(texts)
    assert proba.shape == (60, 2)
    assert np.allclose(proba, clf.pipeline_.predict_proba(texts), atol=1e-6)


def test_multi_label_is_one_vs_rest_with_tuned_thresholds():
    texts, labels = multi_label_texts(80, seed=2)
    eval_texts, eval_labels = multi_label_texts(30, seed=3)
    clf = TfidfClassifier(min_df=1).fit(texts, labels, eval_set=(eval_texts, eval_labels))
    assert clf.schema_.multi_label and len(clf.schema_.thresholds) == 3
    assert len(clf.pipeline_.named_steps["logreg"].estimators_) == 3
    proba = clf.predict_proba(eval_texts)
    assert np.allclose(proba, clf.pipeline_.predict_proba(eval_texts), atol=1e-6)
    predicted = clf.predict(eval_texts)
    assert all(isinstance(p, list) for p in predicted)
    assert np.mean([p == t for p, t in zip(predicted, eval_labels)]) > 0.6


def test_save_load_round_trip_and_untrusted_files_are_refused(tmp_path):
    import skops.io
    from sklearn.preprocessing import StandardScaler

    texts, labels = make_texts(60)
    clf = TfidfClassifier(min_df=1).fit(texts, labels)
    folder = clf.save(tmp_path / "run")
    loaded = TfidfClassifier.load(folder, device="cpu", eval_batch_size=4)  # ignored here
    assert np.array_equal(loaded.predict_proba(texts), clf.predict_proba(texts))
    skops.io.dump({"x": StandardScaler()}, folder / PIPELINE_FILE)
    with pytest.raises(LlmclfError, match="does not hold a TF-IDF"):
        TfidfClassifier.load(folder)
    skops.io.dump(Unknown(), folder / PIPELINE_FILE)
    assert skops.io.get_untrusted_types(file=folder / PIPELINE_FILE)
    with pytest.raises(LlmclfError, match="refusing to load it"):
        TfidfClassifier.load(folder)


class Unknown:
    """A type no TF-IDF pipeline holds: skops would have to run its code to rebuild it."""

    def __init__(self):
        self.payload = [1, 2]


def test_cli_tfidf_run_evaluate_and_predict(tmp_path, capsys):
    texts, labels = make_texts(90)
    data = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    run = tmp_path / "run"
    base = ["train", "--method", "tfidf", "--data", str(data), "--min-df", "1"]
    assert main([*base, "--model", "x", "--output", str(run)]) == 2
    assert "--model does not apply to --method tfidf" in capsys.readouterr().err
    assert main([*base, "--output", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "tfidf" and metrics["macro_f1"] > 0.8
    assert metrics["trainable_params"] > 0 and (run / PIPELINE_FILE).is_file()
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": ["bank stock market", "goal team win"]}).to_csv(source, index=False)
    assert main(["predict", str(run), "--input", str(source), "--output", str(target)]) == 0
    assert list(pd.read_csv(target)["prediction"]) == ["money", "sport"]
