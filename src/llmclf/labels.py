"""The label schema: ordered classes, single- or multi-label, stored with every model."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llmclf.errors import LlmclfError
from llmclf.evaluation.hierarchy import parent_answers
from llmclf.evaluation.selective import abstaining
from llmclf.run_folder import LABELS_FILE, read_json, write_json

NO_CLASS = -1  # the decision for a row without probability mass (an unreadable answer)


@dataclass
class LabelSchema:
    """The classes a model predicts, in the order of its outputs.

    ``classes`` are sorted strings; ``multi_label`` picks sigmoid + BCE over softmax + CE;
    ``thresholds`` (multi-label) are the per-class decision thresholds on probabilities;
    ``label_sep`` joins several labels when a table needs one string per row;
    ``abstain_below`` (``--abstain-below``, or chosen by ``--target-precision``) is the
    probability under which an answer is withheld: one for a single-label run, one per
    label for a multi-label run (``abstains``; ``evaluation/selective.py`` defines it);
    ``hierarchy`` (``--label-hierarchy``) is the separator of classes that are paths
    (``sport/football``): metrics per level, and a withheld answer's sure parent
    (``evaluation/hierarchy.py``), sure at ``parent_below`` (chosen with
    ``--target-precision``) or else at ``abstain_below``.
    """

    classes: list[str]
    multi_label: bool = False
    label_sep: str = "|"
    thresholds: list[float] | None = None
    abstain_below: float | list[float] | None = None
    hierarchy: str | None = None
    parent_below: float | None = None

    @classmethod
    def from_labels(
        cls, labels: list, multi_label: bool, label_sep: str | None = None
    ) -> LabelSchema:
        names = {lab for row in labels for lab in row} if multi_label else set(labels)
        classes = sorted(names)
        if len(classes) < 2:
            found = f"only one class ({classes[0]!r})" if classes else "no labels at all"
            raise LlmclfError(
                f"the training data has {found}: a classifier needs at least two classes; "
                "check --label-column"
            )
        return cls(classes=classes, multi_label=multi_label, label_sep=label_sep or "|")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check_known(self, labels: list, where: str) -> None:
        """Fail in one line when ``labels`` hold classes the model never saw."""
        names = {lab for row in labels for lab in row} if self.multi_label else set(labels)
        unknown = sorted(names - set(self.classes))
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10]) + (" …" if len(unknown) > 10 else "")
            raise LlmclfError(
                f"{where} has labels the model never saw: {shown} "
                f"(it knows {', '.join(self.classes)})"
            )

    def encode(self, labels: list) -> np.ndarray:
        """Single-label: [n] int64 class indices. Multi-label: [n, k] float32 indicators."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multi_label:
            return np.array([index[lab] for lab in labels], dtype=np.int64)
        out = np.zeros((len(labels), self.num_classes), dtype=np.float32)
        for row, labs in enumerate(labels):
            for lab in labs:
                out[row, index[lab]] = 1.0
        return out

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Probabilities -> predictions: [n] indices, or [n, k] 0/1 with the thresholds.

        A single-label row of zeros (a generated answer naming no label) decides
        ``NO_CLASS``, never class 0: metrics count it wrong, ``decode`` gives None.
        """
        if not self.multi_label:
            decided = proba.argmax(axis=1)
            decided[~(proba > 0).any(axis=1)] = NO_CLASS
            return decided
        thresholds = np.asarray(self.thresholds if self.thresholds else [0.5] * self.num_classes)
        return (proba >= thresholds).astype(np.int64)

    def abstains(self, proba: np.ndarray, decided: np.ndarray | None = None) -> np.ndarray:
        """Which answers are withheld at ``abstain_below``: [n] booleans (single-label) or
        [n, k] (multi-label, per label); all False without a threshold. ``decided``:
        ``decide(proba)``, when the caller has it already."""
        proba = np.asarray(proba)
        decided = self.decide(proba) if decided is None else decided
        return abstaining(proba, decided, self.abstain_below)

    def with_abstention(self, threshold: float | list[float] | None) -> LabelSchema:
        """This schema abstaining below ``threshold`` (a float; a multi-label run may take
        one per label, a single float meaning the same for every label); None: never."""
        if threshold is not None and np.ndim(threshold):
            if not self.multi_label or len(threshold) != self.num_classes:
                raise LlmclfError(
                    f"one abstention threshold per label needs a multi-label run of "
                    f"{self.num_classes} labels, not {len(threshold)} thresholds"
                )
            threshold = [float(t) for t in threshold]
        elif threshold is not None:
            threshold = float(threshold)
        # a new threshold: the parents are judged by it too until one is chosen for them
        return dataclasses.replace(self, abstain_below=threshold, parent_below=None)

    def with_parent_threshold(self, threshold: float | None) -> LabelSchema:
        """This schema giving a withheld answer's parent when the parent's classes hold at
        least ``threshold`` (None: ``abstain_below``)."""
        return dataclasses.replace(
            self, parent_below=None if threshold is None else float(threshold)
        )

    def with_hierarchy(self, sep: str | None) -> LabelSchema:
        """This schema reading its classes as paths joined by ``sep`` (None: flat).

        Example:
            >>> LabelSchema(["sport/golf", "sport/tennis", "tech"]).with_hierarchy("/").hierarchy
            '/'
        """
        if sep is None:
            return dataclasses.replace(self, hierarchy=None)
        if self.multi_label:
            raise LlmclfError(
                "--label-hierarchy reads single-label classes as paths; this run is "
                "multi-label: drop --label-hierarchy"
            )
        if not any(sep in c for c in self.classes):
            shown = ", ".join(repr(c) for c in self.classes[:5])
            raise LlmclfError(
                f"--label-hierarchy {sep!r}: no class contains {sep!r} ({shown}"
                f"{' …' if self.num_classes > 5 else ''}); give the separator the labels use "
                "between parent and child, e.g. '/' for 'sport/football'"
            )
        if any(part == "" for c in self.classes for part in c.split(sep)):
            bad = next(c for c in self.classes if "" in c.split(sep))
            raise LlmclfError(
                f"--label-hierarchy {sep!r}: the class {bad!r} has an empty level; write "
                f"paths as parent{sep}child"
            )
        return dataclasses.replace(self, hierarchy=sep)

    def parents(self, proba: np.ndarray, decided: np.ndarray | None = None) -> list[str | None]:
        """For each withheld answer of a hierarchical run that abstains, the deepest parent
        of the decided class it is still sure of: its classes together hold at least
        ``parent_below``, else ``abstain_below`` (``parent_answers``). None where the run
        answers, where no parent is sure, and for runs without a hierarchy or a
        threshold."""
        proba = np.asarray(proba)
        if not self.hierarchy or self.abstain_below is None or self.multi_label:
            return [None] * len(proba)
        decided = self.decide(proba) if decided is None else decided
        withheld = self.abstains(proba, decided)
        sure = self.abstain_below if self.parent_below is None else self.parent_below
        found = parent_answers(proba, decided, self.classes, self.hierarchy, sure)
        return [p if off and p else None for p, off in zip(found, withheld)]

    def decode(self, predictions: np.ndarray) -> list:
        """Indices -> label strings (None for ``NO_CLASS``); indicator rows -> lists of
        label strings."""
        if not self.multi_label:
            return [self.classes[i] if i != NO_CLASS else None for i in predictions]
        return [[c for c, on in zip(self.classes, row) if on] for row in predictions]

    def join(self, label) -> str:
        """One string per row for tables: multi-label labels joined by ``label_sep``."""
        if label is None:
            return ""
        return self.label_sep.join(label) if self.multi_label else label

    def save(self, folder: str | Path) -> None:
        """labels.json in ``folder`` (its one writer)."""
        write_json(Path(folder, LABELS_FILE), asdict(self))

    @classmethod
    def load(cls, folder: str | Path) -> LabelSchema:
        path = Path(folder, LABELS_FILE)
        if not path.is_file():
            raise LlmclfError(f"{folder} holds no {LABELS_FILE}: it is not a finished llmclf run")
        values = read_json(path, "label schema")
        try:
            return cls(**values)
        except TypeError:
            raise LlmclfError(f"{path} is not an llmclf label schema: the run is damaged") from None
