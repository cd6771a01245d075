"""A run behind the server: its classifier, what ``/v1/models`` says of it, and the one
function the model thread runs on a batch of texts (``ServedRun.run_batch``).

Everything a text's answer needs comes from the classifier's own prediction path, in
that one call: the probabilities and logits (``predict_details``, temperature applied),
the labels ``predict`` would give (``labels_from_proba``) and the tokens of the model
input the text becomes (``input_tokens``, an instruct run's whole prompt), which the
run's ``input_budget()`` says were cut or not. No torch call happens anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from llmclf.batching import ShapeBuckets, bounded_shapes


class TextResult(NamedTuple):
    """One text's answer from the model thread."""

    logits: np.ndarray | None  # [n_classes]; None where the run has none (generated answers)
    proba: np.ndarray  # [n_classes], as predict_proba gives it
    labels: Any  # what predict gives: a label (None: no label), or a list for multi-label
    tokens: int  # of the model input, before any cut
    # the answers withheld (--abstain-below): a bool, or [n_classes] bools for multi-label
    abstained: Any = False
    # a hierarchical run's sure parent of a withheld answer (--label-hierarchy), else None
    parent: str | None = None


@dataclass
class ServedRun:
    """One run behind the API, under ``name``. ``processor`` (the dynamic batcher,
    attached by the server) merges concurrent requests; without it each call runs alone."""

    name: str
    classifier: Any
    method: str
    base_model: str | None
    max_length: int | None  # the classifier's input_budget(): more tokens are cut
    tokenizer: Any = None
    shapes: ShapeBuckets | None = None  # None: every batch at its exact shape
    processor: Any = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.schema_.classes)

    @property
    def multi_label(self) -> bool:
        return bool(self.classifier.schema_.multi_label)

    def run_batch(self, texts: list[str]) -> list[TextResult]:
        """Every text's answer (the model thread runs this), rows in input order."""
        with bounded_shapes(self.shapes):
            prediction = self.classifier.predict_details(list(texts))
        labels = self.classifier.labels_from_proba(prediction.proba)
        withheld = self.classifier.abstained(prediction.proba)
        parents = self.classifier.parent_labels(prediction.proba)
        tokens = self.classifier.input_tokens(list(texts))
        logits = prediction.logits if prediction.logits is not None else [None] * len(texts)
        rows = zip(logits, prediction.proba, labels, tokens, withheld, parents)
        return [TextResult(*row) for row in rows]

    @property
    def abstains(self) -> bool:
        """Whether the run withholds unsure answers (``--abstain-below``)."""
        return self.classifier.schema_.abstain_below is not None

    async def results(self, texts: list[str]) -> list[TextResult | None]:
        """Every text's answer through the batcher; None for an empty text, which never
        reaches the model (``llmclf predict``'s empty row)."""
        real = [i for i, text in enumerate(texts) if text.strip()]
        out: list[TextResult | None] = [None] * len(texts)
        if real:
            batch = [texts[i] for i in real]
            if self.processor is not None:
                answers = await self.processor(batch)
            else:
                answers = self.run_batch(batch)
            for i, answer in zip(real, answers):
                out[i] = answer
        return out

    def warm_up(self) -> bool:
        """Run every batch shape this run can be served at once, from two texts longer
        than its token limit (two: an instruct run shares their prompt's prefix, as in
        any batch); False for runs without token batches (TF-IDF) or bounded shapes."""
        if self.shapes is None or self.tokenizer is None:
            return False
        words = 4 * (self.max_length or 512) + 16
        with bounded_shapes(self.shapes, warm_up=True):
            self.classifier.predict_proba(["word " * words, "text " * words])
        return True


def served_run(name: str, classifier, shape_multiple: int = 0) -> ServedRun:
    """``classifier`` served as ``name``. ``shape_multiple``: pad batches to widths that are
    multiples of it and to row counts from a short list (``ShapeBuckets.for_batch_size``);
    0: exact shapes."""
    config = getattr(classifier, "config_", None)
    base = getattr(getattr(config, "model", None), "model", None)
    train_cfg = getattr(config, "train", None)
    shapes = None
    if shape_multiple and train_cfg is not None:
        shapes = ShapeBuckets.for_batch_size(int(train_cfg.eval_batch_size), int(shape_multiple))
    return ServedRun(
        name=name,
        classifier=classifier,
        method=getattr(classifier, "method", "") or type(classifier).__name__,
        base_model=str(base) if base is not None else None,
        max_length=classifier.input_budget(),
        tokenizer=getattr(classifier, "tokenizer_", None),
        shapes=shapes,
    )
