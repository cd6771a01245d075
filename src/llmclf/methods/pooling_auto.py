"""``--pooling auto``: last-token or mean pooling, chosen on the run's own validation split.

Which pooling wins depends on the data (bbc-news at 128 texts: mean +0.09 macro-F1; a
held-out review set: mean -0.12), so no default is safe everywhere. ``auto`` keeps the
pooling that scores higher on validation (macro-F1, micro-F1 for multi-label):

- ``--lora none``: the head trained on each pooling's frozen features (one cached forward
  pass of the base per pooling), with this run's own options. That *is* the run's
  training, so the choice is exact, for the price of a second feature pass.
- LoRA: a full run with each pooling, the better kept: twice the training. The cheap
  proxy, a head on frozen features, was measured and rejected: a base model's last-token
  features are near useless until LoRA adapts them (validation macro-F1 0.66 against
  mean's 0.97 on bbc-news, where the two LoRA runs then tied at 0.98), so it picks mean
  almost always (BENCHMARKS.md, "--pooling auto").

The candidates train in a scratch folder, so ``--resume``, ``--keep-checkpoints`` and
``--report-to`` are refused with auto LoRA runs (``check_auto``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llmclf.errors import LlmclfError

# the poolings auto chooses between, in the order that breaks a tie: last first, as the
# default and the one pooling that exports to a plain transformers folder
CANDIDATES = ("last", "mean")

HOW_FROZEN = "exact: this --lora none run's own head, trained on each pooling's cached features"
HOW_LORA = "a full LoRA run with each pooling, the better kept"
# what a fitted HeadClassifier holds of one candidate's training (with the schema's
# multi-label thresholds): the winner's is put back after both have trained
FITTED = ("model_", "tokenizer_", "placement_", "device_", "dtype_", "frozen_", "train_result_")

NO_VALIDATION = (
    "--pooling auto chooses last or mean on the validation split, and this run has no "
    "validation texts: give the data a validation split (eval_set= in Python), keep "
    "--validation-fraction above 0 with at least 10 training texts, or choose --pooling "
    "last or mean"
)


@dataclass(frozen=True)
class PoolingChoice:
    """What ``--pooling auto`` chose and the figures behind it (``record()`` is what
    metrics.json keeps under ``pooling_auto``).

    Example:
        >>> choice = PoolingChoice.pick({"last": 0.71, "mean": 0.78}, "macro_f1", "probe", 3.0)
        >>> choice.chosen, choice.record()["validation_macro_f1"]
        ('mean', {'last': 0.71, 'mean': 0.78})
    """

    chosen: str
    # the validation figure of each candidate, by pooling name
    scores: dict[str, float]
    # the figure's name: macro_f1, or micro_f1 for multi-label
    metric: str
    # how the figures were made, in words
    how: str
    seconds: float

    @classmethod
    def pick(cls, scores: dict[str, float], metric: str, how: str, seconds: float):
        """The candidate with the highest score; a tie goes to the earlier of
        ``CANDIDATES`` (last)."""
        missing = [p for p in CANDIDATES if scores.get(p) is None]
        if missing:  # a probe without validation figures cannot choose
            raise LlmclfError(NO_VALIDATION)
        best = max(CANDIDATES, key=lambda p: (scores[p], -CANDIDATES.index(p)))
        return cls(best, {p: float(scores[p]) for p in CANDIDATES}, metric, how, seconds)

    def record(self) -> dict:
        """The entry of metrics.json: the choice, each candidate's figure, how, seconds."""
        return {
            "chosen": self.chosen,
            f"validation_{self.metric}": {p: round(s, 4) for p, s in self.scores.items()},
            "how": self.how,
            "seconds": round(self.seconds, 2),
        }

    def describe(self) -> str:
        """One log line: what was chosen and why."""
        figures = ", ".join(f"{p} {s:.4f}" for p, s in self.scores.items())
        return (
            f"--pooling auto chose {self.chosen}: validation {self.metric} {figures} "
            f"({self.how}; {self.seconds:.1f} s)"
        )


def with_pooling(config, pooling: str):
    """``config`` (a ``HeadClassifierConfig``) with ``pooling`` in place of its own."""
    return dataclasses.replace(config, head=dataclasses.replace(config.head, pooling=pooling))


def check_auto(config) -> None:
    """Refuse, in one line, what an auto LoRA run cannot do: its candidates train in a
    scratch folder, so there are no checkpoints to resume or keep and no one run to report."""
    if config.adapter.lora == "none":
        return
    train = config.train
    given = [
        flag
        for flag, value in (
            ("--resume", train.resume),
            ("--keep-checkpoints", train.keep_checkpoints),
            ("--report-to", train.report_to != "none"),
        )
        if value
    ]
    if given:
        raise LlmclfError(
            f"--pooling auto with LoRA trains a run per pooling in a scratch folder, so "
            f"{', '.join(given)} cannot apply: choose --pooling last or mean for them"
        )
