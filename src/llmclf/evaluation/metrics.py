"""Classification metrics: pure functions on label arrays (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

from llmclf.evaluation.hierarchy import level_metrics


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], hierarchy: str | None = None
) -> dict:
    """Accuracy, micro / macro / weighted F1 and per-class figures.

    Single-label: ``y_true`` and ``y_pred`` are [n] class indices (-1: no class). Multi-label:
    [n, k] 0/1 indicator matrices, and ``samples_f1``, ``hamming_loss`` and
    ``subset_accuracy`` are added (``accuracy`` is then the subset accuracy too).
    ``hierarchy`` (single-label classes that are paths joined by it) adds ``levels``: the
    accuracy and macro-F1 of every level above the classes (``hierarchy.level_metrics``).

    Example:
        >>> classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b"])["accuracy"]
        0.6666666666666666
    """
    multi_label = y_true.ndim == 2
    labels = list(range(len(classes)))
    kwargs = {} if multi_label else {"labels": labels}
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, zero_division=0, **kwargs
    )
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0, **kwargs)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0, **kwargs)),
        "weighted_f1": float(
            f1_score(y_true, y_pred, average="weighted", zero_division=0, **kwargs)
        ),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "n": int(len(y_true)),
    }
    if multi_label:
        out["samples_f1"] = float(f1_score(y_true, y_pred, average="samples", zero_division=0))
        out["hamming_loss"] = float(hamming_loss(y_true, y_pred))
        out["subset_accuracy"] = out["accuracy"]
    elif hierarchy:
        names = [classes[i] if i >= 0 else None for i in y_pred]
        out["levels"] = level_metrics([classes[i] for i in y_true], names, classes, hierarchy)
    return out


def selection_metric(multi_label: bool) -> str:
    """The figure that picks the best checkpoint: macro-F1, or micro-F1 for multi-label."""
    return "micro_f1" if multi_label else "macro_f1"


def tune_thresholds(
    proba: np.ndarray, y_true: np.ndarray, grid: np.ndarray | None = None
) -> list[float]:
    """Per-label decision thresholds that maximise each label's F1 on held-out data.

    A label absent from ``y_true`` keeps 0.5. Ties go to the threshold closest to 0.5.

    Args:
        proba: [n, k] sigmoid probabilities.
        y_true: [n, k] 0/1 indicators.
    """
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2) if grid is None else grid
    order = np.argsort(np.abs(grid - 0.5), kind="stable")
    thresholds = []
    for j in range(y_true.shape[1]):
        if y_true[:, j].sum() == 0:
            thresholds.append(0.5)
            continue
        scores = [f1_score(y_true[:, j], proba[:, j] >= t, zero_division=0) for t in grid[order]]
        thresholds.append(float(grid[order][int(np.argmax(scores))]))
    return thresholds
