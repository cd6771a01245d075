"""Batches for inference: sorted by length so little padding is computed, results put
back in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm


def length_sorted_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of similar length, longest first (fails fast on memory).

    Example:
        >>> list(length_sorted_batches([3, 9, 1, 8], 2))
        [[1, 3], [0, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_batch(
    sequences: list[list[int]], pad_id: int, side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad token-id lists into ``input_ids`` and ``attention_mask`` tensors."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if side == "right":
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        else:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.inference_mode()
def run_batches(
    sequences: list[list[int]],
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
    description: str = "predict",
    padding_side: str = "right",
) -> np.ndarray:
    """Apply ``forward`` to length-sorted padded batches; rows come back in input order."""
    return run_grouped(
        list(length_sorted_batches([len(s) for s in sequences], batch_size)),
        lambda rows: pad_batch([sequences[i] for i in rows], pad_id, padding_side),
        forward,
        len(sequences),
        device,
        progress,
        description,
    )


@torch.inference_mode()
def run_grouped(
    batches: list[list[int]],
    make_batch: Callable[[list[int]], dict[str, torch.Tensor]],
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    rows: int,
    device: torch.device,
    progress: bool = True,
    description: str = "predict",
) -> np.ndarray:
    """``forward`` over ``make_batch(indices)`` for each group of row indices in
    ``batches``; the ``rows`` results come back in input order."""
    out: np.ndarray | None = None
    bar = tqdm(total=rows, desc=description, unit="ex", disable=not progress, leave=False)
    for indices in batches:
        batch = {k: v.to(device) for k, v in make_batch(indices).items()}
        result = forward(batch).float().cpu().numpy()
        if out is None:
            out = np.zeros((rows, *result.shape[1:]), dtype=np.float32)
        out[indices] = result
        bar.update(len(indices))
    bar.close()
    return out if out is not None else np.zeros((0,), dtype=np.float32)


def truncated_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, cut to ``max_length`` (the tokenizer's own special tokens,
    such as an appended EOS, included)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
