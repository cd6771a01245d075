"""From logits to probabilities, and how far those probabilities can be trusted."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax. [n, k] -> [n, k]."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def to_proba(logits: np.ndarray, multi_label: bool, temperature: float = 1.0) -> np.ndarray:
    """Softmax (single-label) or per-class sigmoid (multi-label) of ``logits / temperature``."""
    scaled = logits / temperature
    return sigmoid(scaled) if multi_label else softmax(scaled)
