"""Distillation's options and loss: an encoder student learns from a teacher's outputs.

The student (an ``EncoderClassifier``) learns from two signals (Hinton et al., 2015):

    loss = kd_weight · T² · KL(teacher_T ‖ student_T) + ce_weight · CE(student, gold)

``teacher_T`` and ``student_T`` are the softmax (per-label sigmoid for multi-label data)
of the logits divided by the temperature T. Dividing by T shrinks the KL gradients by
1/T², so the KL term is multiplied by T² to keep its weight independent of T. The
cross-entropy term uses the gold labels of the labelled rows; rows from ``--unlabeled``
contribute to the KL term only. ``runs/distill.py`` runs it (``llmclf distill``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from llmclf.config import NON_NEGATIVE, POSITIVE, Options, option
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema


@dataclass
class DistillConfig(Options):
    """Distillation: what the student learns from the teacher."""

    temperature: float = option(
        2.0,
        "softens the teacher's and the student's probabilities in the KL term (T)",
        bound=POSITIVE,
    )
    kd_weight: float = option(
        0.5,
        "weight of the T²-scaled KL divergence to the teacher's softened probabilities",
        bound=NON_NEGATIVE,
    )
    ce_weight: float = option(
        0.5,
        "weight of the cross-entropy to the gold labels (labelled rows only)",
        bound=NON_NEGATIVE,
    )
    unlabeled: str | None = option(
        None,
        "extra texts the student learns from the teacher alone: a CSV / TSV / JSONL / Parquet "
        "file with the text column, or a .txt file with one text per line",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise LlmclfError("--kd-weight and --ce-weight cannot both be 0")


# ---------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    gold: torch.Tensor,
    has_gold: torch.Tensor,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
    multi_label: bool,
) -> torch.Tensor:
    """``kd_weight · T² · KL + ce_weight · CE``, both averaged over rows.

    Args:
        student_logits, teacher_logits: [batch, k].
        gold: [batch, k] one-hot class (single-label) or 0/1 indicators (multi-label);
            ignored where ``has_gold`` is 0.
        has_gold: [batch] 1 for labelled rows, 0 for unlabelled ones.
        multi_label: KL between per-label Bernoulli distributions (summed over labels,
            like the softmax KL sums over classes) and binary cross-entropy (averaged).

    Example:
        >>> s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> gold, has = torch.tensor([[1.0, 0.0]]), torch.tensor([1.0])
        >>> round(float(distillation_loss(s, t, gold, has, 1.0, 1.0, 0.0, False)), 4)
        0.4621
    """
    t = temperature
    if multi_label:
        p_teacher = torch.sigmoid(teacher_logits / t)
        log_p = F.logsigmoid(student_logits / t)
        log_q = F.logsigmoid(-student_logits / t)
        # KL(p_t || p_s) per label = H(p_t, p_s) - H(p_t)
        entropy = F.binary_cross_entropy(p_teacher, p_teacher, reduction="none")
        cross = -(p_teacher * log_p + (1 - p_teacher) * log_q)
        kd = (cross - entropy).sum(dim=1).mean()
        ce_rows = F.binary_cross_entropy_with_logits(student_logits, gold, reduction="none").mean(1)
    else:
        kd = F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        ce_rows = F.cross_entropy(student_logits, gold.argmax(dim=1), reduction="none")
    labelled = has_gold.sum()
    ce = (ce_rows * has_gold).sum() / labelled if labelled > 0 else student_logits.sum() * 0.0
    return kd_weight * t * t * kd + ce_weight * ce


def pack_targets(gold: np.ndarray, has_gold: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """One float32 row per example, ``[gold (k) | has_gold (1) | teacher logits (k)]``: the
    Trainer carries one ``labels`` tensor, so the teacher's logits ride in it."""
    return np.concatenate([gold, has_gold[:, None], teacher], axis=1).astype(np.float32)


def unpack_targets(rows, k: int):
    """Inverse of ``pack_targets`` (tensors or arrays): (gold, has_gold, teacher)."""
    return rows[:, :k], rows[:, k], rows[:, k + 1 :]


def packed_loss(config: DistillConfig, schema: LabelSchema):
    """``loss(student_logits, packed_targets)`` for the Trainer."""
    k = schema.num_classes

    def loss(logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        gold, has_gold, teacher = unpack_targets(packed, k)
        return distillation_loss(
            logits,
            teacher,
            gold,
            has_gold,
            config.temperature,
            config.kd_weight,
            config.ce_weight,
            schema.multi_label,
        )

    return loss


def gold_matrix(schema: LabelSchema, labels: list | None, n: int) -> np.ndarray:
    """[n, k] one-hot / indicator rows of the gold labels (zeros when unlabelled)."""
    if labels is None:
        return np.zeros((n, schema.num_classes), dtype=np.float32)
    encoded = schema.encode(labels)
    if schema.multi_label:
        return encoded.astype(np.float32)
    return np.eye(schema.num_classes, dtype=np.float32)[encoded]
