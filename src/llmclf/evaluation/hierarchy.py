"""Hierarchical labels: classes that are paths (``sport/football``, ``comp.sys.mac``).

A run with ``--label-hierarchy SEP`` still predicts one of its classes (a leaf, or any
path the data uses as a label), so its answer is consistent with every level by
construction: the parent of ``sport/football`` is ``sport``. What the hierarchy adds is
pure arithmetic on labels and probabilities, kept here:

- the metrics of each level above the classes (``level_metrics``): how often the run is
  right about the group even where it is wrong about the class;
- the deepest parent of a withheld answer that the run is still sure of
  (``parent_answers``): a run that abstains on ``sport/football`` at 0.6 can still say
  ``sport`` when the texts of the sport classes hold 0.95 of the probability.

Choosing the group first by its summed probability and the class under it ("top-down")
was measured on 20newsgroups (docs/evaluation.md): it lost to the flat decision at every
level for every method, so the decision stays flat.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from llmclf.evaluation.selective import clopper_pearson


def prefix(label: str, level: int, sep: str) -> str:
    """``label`` cut to its first ``level`` parts (a shorter label stays whole).

    Example:
        >>> prefix("comp.sys.mac.hardware", 2, ".")
        'comp.sys'
    """
    return sep.join(label.split(sep)[:level])


def depth(classes: list[str], sep: str) -> int:
    """The number of levels of the deepest class.

    Example:
        >>> depth(["sport/football", "sport/tennis", "politics"], "/")
        2
    """
    return max(len(c.split(sep)) for c in classes)


def level_metrics(
    gold: list[str | None], predicted: list[str | None], classes: list[str], sep: str
) -> list[dict]:
    """Accuracy and macro-F1 at every level above the classes' own.

    ``gold`` and ``predicted`` are class names (None: no answer, counted wrong); level 1
    is the top of the paths. As for the classes, the macro average runs over every group
    of ``classes`` at that level. A level whose groups are the classes themselves (every
    class its own group, as below a path's last fork) is the run's main figures, so it is
    not repeated; classes without ``sep`` give no level.

    Example:
        >>> classes = ["a/x", "a/y", "b/z"]
        >>> level_metrics(["a/x", "a/y", "b/z"], ["a/y", "a/y", "a/x"], classes, "/")[0]
        {'level': 1, 'groups': 2, 'accuracy': 0.6666666666666666, 'macro_f1': 0.4}
    """
    out = []
    for level in range(1, depth(classes, sep)):
        groups = sorted({prefix(c, level, sep) for c in classes})
        if len(groups) == len(classes):
            break
        truth = [prefix(g, level, sep) if g is not None else "" for g in gold]
        guess = [prefix(p, level, sep) if p is not None else "" for p in predicted]
        out.append(
            {
                "level": level,
                "groups": len(groups),
                "accuracy": float(accuracy_score(truth, guess)),
                "macro_f1": float(
                    f1_score(truth, guess, labels=groups, average="macro", zero_division=0)
                ),
            }
        )
    return out


def ancestor_masses(
    proba: np.ndarray, decided: np.ndarray, classes: list[str], sep: str
) -> np.ndarray:
    """[n, D] the summed probability of each proper parent of each row's decided class,
    level 1 first (D: the deepest class's levels minus one); NaN where the class has no
    parent at that level, and for rows without a class (-1).

    Example:
        >>> ancestor_masses(np.array([[0.5, 0.3, 0.2]]), np.array([0]), ["a/x", "a/y", "b"], "/")
        array([[0.8]])
    """
    paths = [c.split(sep) for c in classes]
    levels = depth(classes, sep) - 1
    members = {  # (class, level) -> the classes under that class's parent at that level
        (j, level): [i for i, p in enumerate(paths) if p[:level] == path[:level]]
        for j, path in enumerate(paths)
        for level in range(1, len(path))
    }
    out = np.full((len(proba), levels), np.nan)
    for row, choice in enumerate(decided):
        for level in range(1, len(paths[choice]) if choice >= 0 else 1):
            out[row, level - 1] = proba[row, members[choice, level]].sum()
    return out


def deepest_sure(masses: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """The level (1-based) of the deepest parent holding at least ``threshold``, per row;
    0 where none does. ``threshold``: a float, or [K] thresholds giving [K, n].

    Example:
        >>> deepest_sure(np.array([[0.95, 0.6], [0.5, np.nan]]), 0.9)
        array([1, 0])
    """
    sure = np.asarray(masses)[None] >= np.atleast_1d(threshold)[:, None, None]  # [K, n, D]
    levels = np.arange(1, masses.shape[1] + 1)
    out = np.where(sure, levels, 0).max(axis=2)
    return out if np.ndim(threshold) else out[0]


def parent_answers(
    proba: np.ndarray, decided: np.ndarray, classes: list[str], sep: str, threshold: float
) -> list[str]:
    """For each row, the deepest proper parent of its decided class whose classes hold at
    least ``threshold`` of the probability together; "" when none does (or the class has
    no parent). ``proba``: [n, k]; ``decided``: [n] class indices (-1: no class).

    Example:
        >>> p = np.array([[0.5, 0.45, 0.05], [0.4, 0.2, 0.4]])
        >>> parent_answers(p, np.array([0, 0]), ["a/x", "a/y", "b"], "/", 0.9)
        ['a', '']
    """
    level = deepest_sure(ancestor_masses(proba, decided, classes, sep), threshold)
    return [prefix(classes[choice], int(d), sep) if d else "" for choice, d in zip(decided, level)]


def parent_threshold_for_precision(
    proba: np.ndarray,
    decided: np.ndarray,
    gold: np.ndarray,
    classes: list[str],
    sep: str,
    target: float,
    bound: str = "estimate",
) -> float | None:
    """The lowest threshold at which the parents ``parent_answers`` gives these rows (the
    withheld ones) are at least ``target`` right: the most parents reaching ``target``,
    judged as ``selective.threshold_for_precision`` judges answers (``bound``). None when
    no threshold reaches it. ``gold``: [n] class indices.

    A parent is right when the gold class lies under it. The candidates are the parents'
    masses themselves; a lower threshold can answer at a deeper level, so precision is
    not monotone in it and every candidate is tried.

    Example:
        >>> p = np.array([[0.5, 0.45, 0.05], [0.4, 0.35, 0.25], [0.45, 0.1, 0.45]])
        >>> classes = ["a/x", "a/y", "b"]
        >>> parent_threshold_for_precision(p, np.array([0, 0, 0]), np.array([1, 0, 2]), classes, "/", 0.9)
        0.75
    """
    masses = ancestor_masses(proba, decided, classes, sep)
    candidates = np.unique(masses[~np.isnan(masses)])[::-1]
    if not len(candidates):
        return None
    paths = [c.split(sep) for c in classes]
    # right[i, d - 1]: the gold class of row i lies under its decided class's level-d parent
    right = np.zeros(masses.shape, dtype=bool)
    for row, (choice, truth) in enumerate(zip(decided, gold)):
        if choice >= 0:
            for level in range(1, len(paths[choice])):
                right[row, level - 1] = paths[truth][:level] == paths[choice][:level]
    answered, correct = [], []
    for chunk in np.array_split(candidates, max(1, len(candidates) // 256)):
        level = deepest_sure(masses, chunk)  # [K, n]
        given = level > 0
        hit = np.take_along_axis(right[None], np.maximum(level - 1, 0)[..., None], axis=2)[..., 0]
        answered.append(given.sum(axis=1))
        correct.append((hit & given).sum(axis=1))
    answered, correct = np.concatenate(answered), np.concatenate(correct)
    if bound == "lower":
        reaches = clopper_pearson(correct, answered)[0] >= target
    else:
        reaches = correct >= target * answered - 1e-12
    reaching = np.flatnonzero(reaches & (answered > 0))
    return float(candidates[reaching[-1]]) if len(reaching) else None


def parent_figures(gold: list[str], parents: list[str | None], withheld: np.ndarray, sep: str):
    """How the parents of withheld answers did: of the ``withheld`` rows, the share given a
    parent, and the share of those parents that are ancestors of the gold class.

    Example:
        >>> parent_figures(["a/x", "a/y", "b"], ["a", None, None], np.array([1, 1, 0]), "/")
        {'withheld': 2, 'with_parent': 0.5, 'parent_accuracy': 1.0}
    """
    rows = [i for i, off in enumerate(withheld) if off]
    given = [i for i in rows if parents[i]]
    right = sum(gold[i].startswith(parents[i] + sep) for i in given)
    return {
        "withheld": len(rows),
        "with_parent": len(given) / len(rows) if rows else None,
        "parent_accuracy": right / len(given) if given else None,
    }
