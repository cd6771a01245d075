"""Training losses shared by the methods that train a classification head."""

from __future__ import annotations

import numpy as np
import torch

from llmclf.labels import LabelSchema


def loss_function(schema: LabelSchema, class_weights: torch.Tensor | None):
    """Cross-entropy (single-label) or binary cross-entropy per label (multi-label)."""
    if schema.multi_label:
        return torch.nn.BCEWithLogitsLoss(pos_weight=class_weights)
    return torch.nn.CrossEntropyLoss(weight=class_weights)


def balanced_weights(targets: np.ndarray, multi_label: bool) -> torch.Tensor:
    """scikit-learn's 'balanced' weights: n / (k * count) per class, or neg / pos per label."""
    if multi_label:
        positives = targets.sum(axis=0).clip(min=1)
        return torch.tensor((len(targets) - positives) / positives, dtype=torch.float32)
    counts = np.bincount(targets, minlength=targets.max() + 1).clip(min=1)
    return torch.tensor(len(targets) / (len(counts) * counts), dtype=torch.float32)
