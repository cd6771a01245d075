"""Frozen-feature mode (``--lora none``): the base model runs once over every text, its
pooled hidden states are cached on disk, and only the linear head is trained on them.

After the first pass an epoch takes milliseconds, and a second run with other head
options (learning rate, class weights, ...) on the same texts reuses the cache. Features are
written in chunks as soon as each is done, so a killed extraction resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from llmclf.batching import run_batches
from llmclf.catalog import cache_dir
from llmclf.run_folder import atomic_path

CHUNK = 256


def feature_key(description: dict, sequences: list[list[int]]) -> str:
    """A cache key from what determines the features: model, pooling, layers, precision
    and the exact token ids (so tokenizer and texts are both covered)."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode())
    for ids in sequences:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:24]


def cached_features(
    sequences: list[list[int]],
    pool,
    key: str,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
) -> np.ndarray:
    """[n, hidden] pooled features of ``sequences``, from the cache when already computed.

    ``pool(batch) -> [batch, hidden]`` runs the frozen model on one padded batch.
    """
    folder = cache_dir() / "features" / key
    folder.mkdir(parents=True, exist_ok=True)
    chunks = []
    for index, start in enumerate(range(0, len(sequences), CHUNK)):
        path = folder / f"chunk-{index:05d}.npy"
        if path.is_file():
            chunks.append(np.load(path))
            continue
        part = run_batches(
            sequences[start : start + CHUNK],
            pool,
            pad_id,
            batch_size,
            device,
            progress=progress,
            description=f"features {start}/{len(sequences)}",
        )
        with atomic_path(path) as partial:
            np.save(partial, part)
        chunks.append(part)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


@dataclass
class FeatureCollator:
    """Stacks cached feature vectors and their labels into a batch."""

    multi_label: bool

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        dtype = torch.float32 if self.multi_label else torch.long
        return {
            "features": torch.tensor(np.array([r["features"] for r in rows]), dtype=torch.float32),
            "labels": torch.tensor(np.array([r["labels"] for r in rows]), dtype=dtype),
        }


def feature_rows(features: np.ndarray, targets: np.ndarray) -> list[dict]:
    """A map-style dataset the Trainer can batch: one dict per example."""
    return [{"features": f, "labels": t} for f, t in zip(features, targets)]
