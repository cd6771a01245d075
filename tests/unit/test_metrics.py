import numpy as np
from sklearn.metrics import f1_score

from llmclf.evaluation.metrics import classification_metrics, tune_thresholds


def test_single_label_metrics_match_hand_computed_values():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == 4 / 6
    # per class F1: a: p=1/2 r=1/2 -> .5 ; b: p=2/3 r=1 -> .8 ; c: p=1 r=1/2 -> 2/3
    assert np.isclose(m["macro_f1"], (0.5 + 0.8 + 2 / 3) / 3)
    assert np.isclose(m["micro_f1"], 4 / 6)
    assert m["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert m["n"] == 6 and "hamming_loss" not in m


def test_missing_class_in_predictions_counts_as_zero_f1():
    m = classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), ["a", "b", "c"])
    assert m["per_class"]["c"]["f1"] == 0.0


def test_multi_label_metrics():
    y_true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    y_pred = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["subset_accuracy"] == m["accuracy"] == 2 / 3
    assert np.isclose(m["hamming_loss"], 1 / 9)
    assert np.isclose(m["micro_f1"], f1_score(y_true, y_pred, average="micro"))
    assert np.isclose(m["samples_f1"], (2 / 3 + 1 + 1) / 3)


def test_tuned_thresholds_beat_one_half_on_shifted_scores():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 2)) < 0.3).astype(int)
    # label 0 is confident; label 1's positives only reach ~0.3
    proba = np.where(y == 1, [0.9, 0.3], [0.1, 0.1]) + rng.normal(0, 0.03, y.shape)
    thresholds = tune_thresholds(proba, y)
    assert thresholds[1] < 0.3 < thresholds[0] or thresholds[1] < 0.3
    tuned = f1_score(y[:, 1], proba[:, 1] >= thresholds[1])
    fixed = f1_score(y[:, 1], proba[:, 1] >= 0.5, zero_division=0)
    assert tuned > 0.9 > fixed


def test_absent_label_keeps_default_threshold():
    assert tune_thresholds(np.full((4, 1), 0.9), np.zeros((4, 1), dtype=int)) == [0.5]
