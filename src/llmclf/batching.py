"""Batches for inference: sorted by length so little padding is computed, results put
back in input order."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

# What one forward call costs beyond its tokens, in padded-token equivalents: the grouping
# below cuts a batch where the padding saved outweighs this. Measured on CPU (SmolLM2-135M,
# bf16, 2-core Xeon): ~30-40 ms per call plus ~0.24 ms per padded token, so ~128 tokens;
# the served/offline throughput it gives barely moves between 64 and 512. On a GPU a
# forward of a few thousand tokens costs about what a small one does, so padding is cheap
# and fewer calls win (a reasoned default, not measured here).
FORWARD_OVERHEAD_TOKENS = {"cpu": 128, "cuda": 4096, "mps": 1024}
# --batch-invariant: every text alone, padded to a multiple of this many tokens (a bounded
# set of shapes, the same in every path: predict, evaluate, the server)
INVARIANT_WIDTH_MULTIPLE = 32


@dataclass(frozen=True)
class ShapeBuckets:
    """A bounded set of batch shapes: every batch is padded to a width that is a multiple
    of ``width_multiple`` and to a row count from ``rows`` (repeating its last row, whose
    result is dropped).

    Why: on CPU the bf16 kernels keep memory for every batch shape they have seen (about
    2 MiB per new row count of one linear layer, measured on a Xeon with AMX). A server
    sees arbitrary shapes, so its memory grows with its uptime; bounded shapes bound it,
    as captured batch sizes do in vLLM. ``warm_up`` runs each shape once.

    Example:
        >>> buckets = ShapeBuckets.for_batch_size(12, width_multiple=32)
        >>> buckets.rows, buckets.padded_rows(5), buckets.padded_width(33)
        ((1, 2, 4, 8, 12), 8, 64)
    """

    width_multiple: int = 32
    rows: tuple[int, ...] = (1, 2, 4, 8, 16, 32)

    def __post_init__(self):
        if self.width_multiple < 1:
            raise ValueError(f"width_multiple must be at least 1, not {self.width_multiple}")
        if not self.rows or min(self.rows) < 1 or list(self.rows) != sorted(set(self.rows)):
            raise ValueError(f"rows must be increasing positive counts, not {self.rows}")

    @classmethod
    def invariant(cls) -> ShapeBuckets:
        """``--batch-invariant``'s shapes: one row, a width from the row's own length."""
        return cls(INVARIANT_WIDTH_MULTIPLE, (1,))

    @classmethod
    def for_batch_size(cls, batch_size: int, width_multiple: int = 32) -> ShapeBuckets:
        """Powers of two below ``batch_size``, and ``batch_size`` itself."""
        rows = [1 << k for k in range(batch_size.bit_length()) if 1 << k < batch_size]
        return cls(width_multiple, (*rows, batch_size))

    def padded_rows(self, count: int) -> int:
        """The smallest bucket that holds ``count`` rows (``count`` above the largest)."""
        return next((r for r in self.rows if r >= count), count)

    def padded_width(self, width: int) -> int:
        return -(-max(width, 1) // self.width_multiple) * self.width_multiple

    def shapes(self, longest: int, batch_size: int) -> list[tuple[int, int]]:
        """Every (rows, width) a batch of at most ``batch_size`` rows of at most
        ``longest`` tokens can be padded to, largest first."""
        rows = sorted({self.padded_rows(r) for r in range(1, batch_size + 1)}, reverse=True)
        widths = range(self.padded_width(longest), 0, -self.width_multiple)
        return [(r, w) for r in rows for w in widths]


@dataclass(frozen=True)
class _Bounded:
    buckets: ShapeBuckets
    warm_up: bool


_BOUNDED: ContextVar[_Bounded | None] = ContextVar("llmclf_bounded_shapes", default=None)


@contextlib.contextmanager
def bounded_shapes(buckets: ShapeBuckets | None, warm_up: bool = False) -> Iterator[None]:
    """Inside, ``run_batches`` pads every batch to ``buckets`` (``None``: exact shapes);
    with ``warm_up``, it first runs every shape of ``buckets.shapes`` once, from the
    longest sequence it is given (a server calls this once per model at start-up).

    Example:
        >>> with bounded_shapes(ShapeBuckets(32, (1, 2, 4))):  # doctest: +SKIP
        ...     classifier.predict_proba(texts)
    """
    token = _BOUNDED.set(_Bounded(buckets, warm_up) if buckets is not None else None)
    try:
        yield
    finally:
        _BOUNDED.reset(token)


def active_bounds() -> tuple[ShapeBuckets | None, bool]:
    """The ``bounded_shapes`` in force: its buckets (None: exact shapes) and whether to
    warm up first (for batchers other than ``run_batches``, e.g. chunked texts' windows)."""
    bounded = _BOUNDED.get()
    return (bounded.buckets, bounded.warm_up) if bounded is not None else (None, False)


@torch.inference_mode()
def warm_up_shapes(
    buckets: ShapeBuckets,
    longest: int,
    batch_size: int,
    make_batch: Callable[[int, int], dict[str, torch.Tensor]],
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    device: torch.device,
) -> None:
    """``forward`` once on ``make_batch(rows, width)`` for every shape of
    ``buckets.shapes(longest, batch_size)``, largest first (a server's start-up)."""
    for rows, width in buckets.shapes(longest, batch_size):
        forward({k: v.to(device) for k, v in make_batch(rows, width).items()})


def forward_overhead_tokens(device: torch.device | str | None) -> int:
    """The per-call overhead ``length_sorted_batches`` weighs padding against."""
    kind = torch.device(device).type if device is not None else "cpu"
    return FORWARD_OVERHEAD_TOKENS.get(kind, FORWARD_OVERHEAD_TOKENS["cpu"])


def length_sorted_batches(
    lengths: list[int],
    batch_size: int,
    overhead_tokens: float = math.inf,
    buckets: ShapeBuckets | None = None,
) -> list[list[int]]:
    """Row indices in batches of at most ``batch_size``, of similar length, longest first
    (fails fast on memory).

    The rows are sorted by length and cut where it is cheapest: a batch costs
    ``overhead_tokens`` plus its padded tokens (rows × its longest row), and the cuts
    minimise the sum (dynamic programming, O(rows × batch_size)). ``inf`` weighs a call
    above any padding: the fewest batches, each as little padded as that allows. A mixed
    handful (what a server gathers from concurrent requests) splits into a few groups of
    like lengths instead of padding every short text to the longest. With ``buckets``, a
    batch costs the shape it is padded to.

    Example:
        >>> length_sorted_batches([3, 9, 1, 8], 2)
        [[1, 3], [0, 2]]
        >>> length_sorted_batches([256, 250, 30, 20], 4, overhead_tokens=128)
        [[0, 1], [2, 3]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    width = [max(int(lengths[i]), 1) for i in order]
    count = len(order)
    rows_of = buckets.padded_rows if buckets is not None else (lambda n: n)
    if buckets is not None:
        width = [buckets.padded_width(w) for w in width]
    # inf: fewest batches first, then least padding (a call outweighs every token)
    overhead = overhead_tokens if math.isfinite(overhead_tokens) else sum(width) * batch_size + 1
    best = [0.0] + [float("inf")] * count  # best[j]: cheapest cost of the first j rows
    start_of = [0] * (count + 1)
    for end in range(1, count + 1):
        for start in range(max(0, end - batch_size), end):
            cost = best[start] + overhead + rows_of(end - start) * width[start]
            if cost < best[end]:
                best[end], start_of[end] = cost, start
    cuts, end = [], count
    while end > 0:
        cuts.append((start_of[end], end))
        end = start_of[end]
    return [order[a:b] for a, b in reversed(cuts)]


def pad_batch(
    sequences: list[list[int]], pad_id: int, side: str = "right", width: int = 0
) -> dict[str, torch.Tensor]:
    """Pad token-id lists into ``input_ids`` and ``attention_mask`` tensors, at least
    ``width`` wide."""
    width = max(width, *(len(s) for s in sequences))
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


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Place texts of these ``lengths`` in as few rows of at most ``width`` tokens as
    first-fit decreasing finds (a text longer than ``width`` gets a row of its own); each
    row lists its texts' indices, longest first.

    Example:
        >>> pack_rows([5, 3, 8, 2, 4], width=10)
        [[2, 3], [0, 4], [1]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        size = lengths[index]
        row = next((r for r, free in enumerate(room) if free >= size), None)
        if row is None:
            rows.append([index])
            room.append(width - size)
        else:
            rows[row].append(index)
            room[row] -= size
    return rows


def packed_batch(sequences: list[list[int]], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    """Token-id lists packed several to a row (``pack_rows``) instead of padded one to a
    row: ``input_ids``, ``position_ids`` counting from 0 in every text (transformers then
    keeps attention within each text: a block-diagonal causal mask) and ``segments``, the
    text each position holds (its index in ``sequences``; -1 on the padding that evens the
    rows, which gets positions of its own so it is a block apart). No ``attention_mask``:
    transformers builds the mask from the positions only without one.

    Example:
        >>> batch = packed_batch([[7, 8, 9], [5], [6, 6]], pad_id=0, width=4)
        >>> batch["input_ids"].tolist(), batch["position_ids"].tolist()
        ([[7, 8, 9, 5], [6, 6, 0, 0]], [[0, 1, 2, 0], [0, 1, 0, 1]])
        >>> batch["segments"].tolist()
        [[0, 0, 0, 1], [2, 2, -1, -1]]
    """
    rows = pack_rows([len(s) for s in sequences], width)
    filled = [sum(len(sequences[i]) for i in row) for row in rows]
    shape = (len(rows), max(filled))
    ids = torch.full(shape, pad_id, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for index in row:
            size = len(sequences[index])
            ids[r, at : at + size] = torch.tensor(sequences[index])
            positions[r, at : at + size] = torch.arange(size)
            segments[r, at : at + size] = index
            at += size
        positions[r, at:] = torch.arange(shape[1] - at)
    return {"input_ids": ids, "position_ids": positions, "segments": segments}


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
    overhead_tokens: float | None = None,
    invariant: bool = False,
) -> np.ndarray:
    """Apply ``forward`` to length-sorted padded batches of at most ``batch_size`` rows
    (cut by ``length_sorted_batches``; ``overhead_tokens`` None is the device's
    ``forward_overhead_tokens``); rows come back in input order. Inside
    ``bounded_shapes``, batches are padded to its buckets.

    ``invariant``: each sequence runs alone, padded to ``ShapeBuckets.invariant()``'s
    width for its length, whatever the buckets in force: its result depends on its own
    tokens only (the kernels' blocking depends on a batch's shape, and so, in bf16, do
    the last bits of every row)."""
    if overhead_tokens is None:
        overhead_tokens = forward_overhead_tokens(device)
    buckets, warm_up = active_bounds()
    if invariant:
        buckets, batch_size = ShapeBuckets.invariant(), 1
    if warm_up and sequences:
        longest = max(sequences, key=len)
        warm_up_shapes(
            buckets,
            len(longest),
            batch_size,
            lambda rows, width: pad_batch([fitted(longest, width)] * rows, pad_id, padding_side),
            forward,
            device,
        )

    def make_batch(rows: list[int]) -> dict[str, torch.Tensor]:
        chosen = [sequences[i] for i in rows]
        if buckets is None:
            return pad_batch(chosen, pad_id, padding_side)
        chosen += [chosen[-1]] * (buckets.padded_rows(len(chosen)) - len(chosen))
        width = buckets.padded_width(max(len(s) for s in chosen))
        return pad_batch(chosen, pad_id, padding_side, width)

    return run_grouped(
        length_sorted_batches([len(s) for s in sequences], batch_size, overhead_tokens, buckets),
        make_batch,
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
    ``batches``; the ``rows`` results come back in input order (a batch may hold rows
    past its indices, as padding: their results are dropped)."""
    out: np.ndarray | None = None
    bar = tqdm(total=rows, desc=description, unit="ex", disable=not progress, leave=False)
    for indices in batches:
        batch = {k: v.to(device) for k, v in make_batch(indices).items()}
        result = forward(batch)[: len(indices)].float().cpu().numpy()
        if out is None:
            out = np.zeros((rows, *result.shape[1:]), dtype=np.float32)
        out[indices] = result
        bar.update(len(indices))
    bar.close()
    return out if out is not None else np.zeros((0,), dtype=np.float32)


def fitted(sequence: list[int], width: int) -> list[int]:
    """``sequence`` made exactly ``width`` long, keeping its end (where the pooled token,
    or a prompt's answer cue, is): cut from the front, or its first token repeated.

    Example:
        >>> fitted([5, 6, 7], 2), fitted([5, 6, 7], 5)
        ([6, 7], [5, 5, 5, 6, 7])
    """
    if len(sequence) >= width:
        return list(sequence[len(sequence) - width :])
    return [sequence[0]] * (width - len(sequence)) + list(sequence)


def truncated_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, cut to ``max_length`` (the tokenizer's own special tokens,
    such as an appended EOS, included)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
