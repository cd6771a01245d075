"""Texts longer than ``--max-length`` tokens: cut them (``truncate``), keep their start and
end (``head-tail``, Sun et al. 2019), or read them in windows (``chunks``).

``chunks`` (for the methods whose ``long_text_modes`` declare it: head, encoder) splits a
text with the tokenizer's own overflow (``return_overflowing_tokens`` with ``stride`` = the
tokens a window shares with the one before), keeps the first ``max_chunks`` windows, pools
each window as a single text is pooled, and aggregates the windows' vectors (``aggregate``:
mean, max, or a learned attention score per window, ``chunk_attention``) into one vector
for the head.

    text ──tokenizer overflow──> windows [W, seq] ──pool──> [W, hidden]
         ──group_windows──> [texts, K, hidden] + mask [texts, K] ──aggregate──> [texts, hidden]

Training runs every window of a batch's texts through the model and back: ``--batch-size``
counts texts, a step holds up to batch_size × max_chunks windows, and memory grows with
them. With ``--lora none`` (head) the windows' features are computed once and cached, and
only the aggregation and the head learn (gradients through the aggregated features only).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from llmclf.batching import (
    ShapeBuckets,
    active_bounds,
    fitted,
    pad_batch,
    run_grouped,
    truncated_ids,
    warm_up_shapes,
)
from llmclf.config import NON_NEGATIVE, POSITIVE, flag, option, validate
from llmclf.errors import LlmclfError

ATTENTION_MODULE = "chunk_attention"  # the learned window scorer, a submodule of the model
# Texts of at most this many windows are "short" for chunks: on 20newsgroups cut to 1-3
# windows, chunks lost to truncate (BENCHMARKS.md, "Long texts")
SHORT_WINDOWS = 3

log = logging.getLogger("llmclf")


def check_ratio(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise LlmclfError(f"{flag(name)} must be between 0 and 1, not {value}")


@dataclass
class LongTextConfig:
    """Texts longer than --max-length (see docs/long-text.md)."""

    long_text: str = option(
        "truncate",
        "truncate = keep the first --max-length tokens; head-tail = keep the first and the "
        "last tokens of the budget (--head-tail-ratio); chunks (head, encoder) = read up to "
        "--max-chunks windows of --max-length tokens and aggregate them. TF-IDF always reads "
        "every word (it is not token-based)",
        choices=("truncate", "head-tail", "chunks"),
    )
    head_tail_ratio: float = option(
        0.25,
        "head-tail: share of the token budget taken from the start of the text, the rest from "
        "its end (0.25: Sun et al. 2019's 128 + 382 of 512)",
        check=check_ratio,
    )
    chunk_stride: int = option(
        0,
        "chunks: tokens each window repeats from the end of the one before (< --max-length)",
        bound=NON_NEGATIVE,
    )
    max_chunks: int = option(
        4,
        "chunks: read at most this many windows of a text (the rest is cut). --batch-size "
        "counts texts: a training step runs up to batch_size × max_chunks windows, and memory "
        "grows with them",
        bound=POSITIVE,
    )
    chunk_last_window: str = option(
        "full",
        "chunks: the last window of a text read whole. full = its last --max-length tokens "
        "(overlapping the window before); rest = the tokens left after the windows before, "
        "however few (runs written before this option read texts so)",
        choices=("full", "rest"),
    )
    chunk_aggregation: str = option(
        "mean",
        "chunks: how the windows' pooled vectors become one: mean, max (per dimension), or "
        "attention (a learned score per window, trained and saved with the head)",
        choices=("mean", "max", "attention"),
    )

    def __post_init__(self) -> None:
        validate(self)

    @property
    def chunked(self) -> bool:
        return self.long_text == "chunks"


def check_long_text(config: LongTextConfig, max_length: int) -> None:
    """What ``LongTextConfig`` alone cannot check: the stride against ``max_length``
    (called by each method config's ``__post_init__``; which modes a method reads is its
    ``long_text_modes``, checked by ``ClassifierBase.resolve_config``)."""
    if not config.chunked:
        return
    if config.chunk_stride >= max_length:
        raise LlmclfError(
            f"--chunk-stride {config.chunk_stride} must be smaller than --max-length "
            f"{max_length} (the stride is the overlap of two windows)"
        )


# ---------------------------------------------------------------------------------------
# Token ids
# ---------------------------------------------------------------------------------------


def head_tail_split(budget: int, ratio: float) -> tuple[int, int]:
    """(head, tail) token counts of a ``budget`` split at ``ratio``.

    Example:
        >>> head_tail_split(510, 0.25)
        (128, 382)
    """
    head = int(round(budget * ratio))
    return head, budget - head


def head_tail_ids(tokenizer, texts: list[str], max_length: int, ratio: float) -> list[list[int]]:
    """Token ids of each text in at most ``max_length`` tokens (the tokenizer's special
    tokens included): a text that does not fit keeps its first ``head`` and last ``tail``
    tokens (``head_tail_split`` of the room the special tokens leave); one that fits is
    encoded as ``tokenizer(text)`` encodes it.

    The cut is made on the tokenizer's own encodings (``tokenizers.Encoding.truncate`` from
    each side, ``merge``, then its post-processor adds the special tokens), so no text is
    re-tokenized across the cut.
    """
    from tokenizers import Encoding

    backend = tokenizer.backend_tokenizer
    room = max_length - tokenizer.num_special_tokens_to_add()
    head, tail = head_tail_split(room, ratio)
    out = tokenizer(list(texts))["input_ids"]
    for row, text in enumerate(texts):
        if len(out[row]) <= max_length:
            continue
        front = backend.encode(text, add_special_tokens=False)
        back = backend.encode(text, add_special_tokens=False)
        front.truncate(head)
        back.truncate(tail, direction="left")
        parts = [e for e, n in ((front, head), (back, tail)) if n > 0]
        out[row] = backend.post_process(Encoding.merge(parts)).ids
    return out


def chunk_windows(
    tokenizer,
    texts: list[str],
    max_length: int,
    stride: int,
    max_chunks: int,
    last_window: str = "full",
) -> list[list[list[int]]]:
    """Each text as windows of at most ``max_length`` token ids (special tokens included
    in each), the next repeating the last ``stride`` text tokens of the one before; at most
    ``max_chunks`` windows, from the start. A text that fits is one window, the ids
    ``tokenizer(text)`` gives.

    ``last_window`` full: a text read whole in several windows ends in a full window, its
    last ``max_length`` tokens (``end_windows``), overlapping the one before by more than
    ``stride``, rather than the few tokens left over (``rest``, the tokenizer's overflow). A
    window of two tokens would otherwise weigh as much as a full one in the aggregation, and
    a text one token longer than a window would be read as half a window and half that
    token (see docs/long-text.md).

    Example (a word-level tokenizer that appends EOS = 2, max_length 5, stride 1):
        ``"a b c d e f g h"`` -> ``[[a, b, c, d, 2], [d, e, f, g, 2], [e, f, g, h, 2]]``
    """
    room = max_length - tokenizer.num_special_tokens_to_add()
    if stride >= room:
        raise LlmclfError(
            f"--chunk-stride {stride} leaves no new tokens per window: --max-length "
            f"{max_length} holds {room} text tokens besides the special ones"
        )
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
    )
    windows: list[list[list[int]]] = [[] for _ in texts]
    cut = [False] * len(texts)  # more windows than max_chunks: the last one kept is full
    for ids, owner in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"]):
        if len(windows[owner]) < max_chunks:
            windows[owner].append(list(ids))
        else:
            cut[owner] = True
    ends = [
        row
        for row, text_windows in enumerate(windows)
        if last_window == "full"
        and len(text_windows) > 1
        and not cut[row]
        and len(text_windows[-1]) < max_length
    ]
    for row, ids in zip(ends, end_windows(tokenizer, [texts[row] for row in ends], room)):
        windows[row][-1] = ids
    return windows


def end_windows(tokenizer, texts: list[str], room: int) -> list[list[int]]:
    """The last ``room`` text tokens of each text with the tokenizer's special tokens
    around them, cut on the tokenizer's own encodings (``tokenizers.Encoding.truncate``
    from the left, then its post-processor), as ``head_tail_ids`` cuts."""
    if not texts:
        return []
    backend = tokenizer.backend_tokenizer
    out = []
    for encoding in tokenizer(texts, add_special_tokens=False).encodings:
        encoding.truncate(room, direction="left")
        out.append(backend.post_process(encoding).ids)
    return out


def tokens_read(config: LongTextConfig, max_length: int, special_tokens: int) -> int:
    """The most tokens of a text (special ones counted once, as ``tokenizer(text)``
    counts them) that a run reads; the rest is cut.

    Example:
        >>> tokens_read(LongTextConfig(long_text="chunks", chunk_stride=16), 128, 1)
        461
    """
    if not config.chunked:
        return max_length
    room = max_length - special_tokens
    return config.max_chunks * room - (config.max_chunks - 1) * config.chunk_stride + special_tokens


def short_text_warning(lengths: list[int], max_length: int, special_tokens: int) -> str | None:
    """The one warning line for ``--long-text chunks`` on training texts that are short
    for the window: the median text (``lengths``: token counts, special ones included) fits
    in ``SHORT_WINDOWS`` windows or fewer. None when the texts are longer.

    Example:
        >>> short_text_warning([500, 700], 128, 1) is None
        True
        >>> short_text_warning([20, 40], 16, 1).split(":")[0]
        '--long-text chunks'
    """
    median = statistics.median(lengths) if lengths else 0
    if median > SHORT_WINDOWS * (max_length - special_tokens) + special_tokens:
        return None
    return (
        f"--long-text chunks: the median training text is {median:g} tokens, at most "
        f"{SHORT_WINDOWS} windows of --max-length {max_length}; on texts this short the "
        "average of the windows can score below --long-text truncate (docs/long-text.md, "
        "'When chunks help'): compare both on your validation split"
    )


# ---------------------------------------------------------------------------------------
# Aggregation (pure tensor functions and the one learned layer)
# ---------------------------------------------------------------------------------------


def chunk_attention(hidden: int) -> torch.nn.Linear:
    """The learned window scorer of ``--chunk-aggregation attention``: one score per window
    from its pooled vector (the windows are then averaged with the softmax of the scores).
    Attached to the model as ``chunk_attention``, so it trains and is saved with the head,
    at the head's learning rate.

    It starts at zero, so a fresh scorer gives every window the same weight (``mean``) and
    training moves it from there, rather than from a random weighting of the windows.
    """
    scorer = torch.nn.Linear(hidden, 1)
    torch.nn.init.zeros_(scorer.weight)
    torch.nn.init.zeros_(scorer.bias)
    return scorer


def group_windows(pooled: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of consecutive texts, [W, hidden], as [texts, K, hidden] (K = the most
    windows of a text) with a [texts, K] bool mask of the real ones (padding is zeros).

    Example:
        >>> features, mask = group_windows(torch.arange(3.0)[:, None], torch.tensor([2, 1]))
        >>> features.squeeze(-1), mask
        (tensor([[0., 1.],
                [2., 0.]]), tensor([[ True,  True],
                [ True, False]]))
    """
    counts = counts.to(pooled.device)
    widest = int(counts.max())
    mask = torch.arange(widest, device=pooled.device)[None, :] < counts[:, None]
    features = pooled.new_zeros((len(counts), widest, pooled.shape[-1]))
    features[mask] = pooled
    return features, mask


def aggregate(
    features: torch.Tensor,
    mask: torch.Tensor,
    how: str,
    attention: torch.nn.Module | None = None,
) -> torch.Tensor:
    """One vector per text from its windows' vectors; padded windows (mask False) never
    count. [texts, K, hidden] + [texts, K] -> [texts, hidden].

    ``how``: mean, max (per dimension) or attention (``attention``, a ``chunk_attention``
    layer, scores each window; softmax over the real ones). A text of one window gets that
    window's vector.

    Example:
        >>> features = torch.tensor([[[1.0, 4.0], [3.0, 0.0]], [[5.0, 5.0], [9.0, 9.0]]])
        >>> mask = torch.tensor([[True, True], [True, False]])
        >>> aggregate(features, mask, "mean"), aggregate(features, mask, "max")
        (tensor([[2., 2.],
                [5., 5.]]), tensor([[3., 4.],
                [5., 5.]]))
    """
    keep = mask.unsqueeze(-1)
    # where() keeps a padded window's values out even when they are inf or nan
    real = torch.where(
        keep, features, torch.zeros((), dtype=features.dtype, device=features.device)
    )
    if how == "mean":
        return real.sum(dim=1) / keep.sum(dim=1).clamp(min=1).to(features.dtype)
    if how == "max":
        return features.masked_fill(~keep, float("-inf")).amax(dim=1)
    if how == "attention":
        if attention is None:
            raise ValueError("attention aggregation needs its scoring layer")
        dtype = next(attention.parameters()).dtype
        scores = attention(real.to(dtype)).squeeze(-1).float()
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return (weights.unsqueeze(-1) * real.float()).sum(dim=1).to(features.dtype)
    raise ValueError(f"unknown chunk aggregation {how!r}")


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------


def window_batch(
    rows_windows: list[list[list[int]]], pad_id: int, width: int = 0
) -> dict[str, torch.Tensor]:
    """Every window of these texts, right-padded in one batch (at least ``width`` wide),
    and ``window_counts``."""
    flat = [w for windows in rows_windows for w in windows]
    batch = pad_batch(flat, pad_id, width=width)
    batch["window_counts"] = torch.tensor([len(w) for w in rows_windows], dtype=torch.long)
    return batch


@dataclass
class WindowCollator:
    """Training / validation batches of chunked texts: their windows flattened and padded,
    ``window_counts`` per text, and the stacked labels."""

    pad_id: int
    label_dtype: torch.dtype

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = window_batch([r["windows"] for r in rows], self.pad_id)
        batch["labels"] = torch.tensor(
            np.array([r["labels"] for r in rows]), dtype=self.label_dtype
        )
        return batch


def window_dataset(windows: list[list[list[int]]], targets: np.ndarray):
    """A ``datasets.Dataset`` of each text's windows and its targets; ``length`` (what the
    Trainer groups batches by) is the text's token count over its windows."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "windows": windows,
            "labels": targets.tolist(),
            "length": [sum(len(w) for w in ws) for ws in windows],
        }
    )


@torch.inference_mode()
def run_window_batches(
    windows: list[list[list[int]]],
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
    invariant: bool = False,
) -> np.ndarray:
    """``forward`` over batches of at most ``batch_size`` windows (a text's windows stay
    together; a text with more gets a batch of its own), texts of similar length together;
    [texts, ...] rows back in input order. ``invariant``: each text's windows alone, at
    widths from their own lengths (``batching.run_batches``).

    Inside ``batching.bounded_shapes`` (a server), each batch's windows are padded to a
    bucket: the width to its multiple, the window count to a bucket's row count by one
    extra text of copies whose result is dropped; with its warm-up, every such shape runs
    once first. So a served chunked run, like a plain one, holds kernels for a bounded set
    of shapes."""
    buckets, warm_up = active_bounds()
    if invariant:
        buckets, batch_size = ShapeBuckets.invariant(), 1
    if warm_up and windows:
        longest = max((w for ws in windows for w in ws), key=len)
        warm_up_shapes(
            buckets,
            len(longest),
            batch_size,
            lambda rows, width: window_batch([[fitted(longest, width)] * rows], pad_id),
            forward,
            device,
        )

    def make_batch(rows: list[int]) -> dict[str, torch.Tensor]:
        texts = [windows[i] for i in rows]
        if buckets is None:
            return window_batch(texts, pad_id)
        count = sum(len(ws) for ws in texts)
        extra = buckets.padded_rows(count) - count
        if extra:  # after the real texts: run_grouped drops its row
            texts = [*texts, [texts[-1][-1]] * extra]
        width = buckets.padded_width(max(len(w) for ws in texts for w in ws))
        return window_batch(texts, pad_id, width)

    order = sorted(range(len(windows)), key=lambda i: -sum(len(w) for w in windows[i]))
    batches, current, size = [], [], 0
    for i in order:
        if current and size + len(windows[i]) > batch_size:
            batches.append(current)
            current, size = [], 0
        current.append(i)
        size += len(windows[i])
    if current:
        batches.append(current)
    return run_grouped(batches, make_batch, forward, len(windows), device, progress)


def feature_groups(features: np.ndarray, windows: list[list[list[int]]]) -> list[np.ndarray]:
    """Frozen features of every window in order, [W, hidden], split per text."""
    counts = np.cumsum([len(w) for w in windows])[:-1]
    return np.split(features, counts)


@dataclass
class WindowFeatureCollator:
    """Frozen-feature batches of chunked texts: [texts, K, hidden] features, the
    [texts, K] mask of real windows, and the labels."""

    label_dtype: torch.dtype

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        groups = [torch.as_tensor(np.asarray(r["features"]), dtype=torch.float32) for r in rows]
        counts = torch.tensor([len(g) for g in groups])
        features, mask = group_windows(torch.cat(groups), counts)
        labels = torch.tensor(np.array([r["labels"] for r in rows]), dtype=self.label_dtype)
        return {"features": features, "feature_mask": mask, "labels": labels}


def fitted_ids(tokenizer, texts: list[str], max_length: int, config: LongTextConfig):
    """Token ids of each text in one window of ``max_length``: cut at the end
    (``truncate``) or in the middle (``head-tail``)."""
    if config.long_text == "head-tail":
        return head_tail_ids(tokenizer, texts, max_length, config.head_tail_ratio)
    return truncated_ids(tokenizer, texts, max_length)


class LongTextTokens:
    """The token ids of a method with a ``long_text`` section (head, encoder): each
    text fitted to ``--max-length`` as ``--long-text`` says, or cut into windows."""

    def _encode(self, texts: list[str]) -> list[list[int]]:
        config = self.config_
        return fitted_ids(self.tokenizer_, texts, config.model.max_length, config.long_text)

    def input_budget(self) -> int:
        """The most tokens of a text (special ones included) the run reads: ``max_length``,
        or with ``--long-text chunks`` what its windows read together (``tokens_read``)."""
        config = self.config_
        special = self.tokenizer_.num_special_tokens_to_add()
        return tokens_read(config.long_text, config.model.max_length, special)

    def _warn_if_short(self, texts: list[str]) -> None:
        """With chunks: one warning line when the training texts are short for the window
        (``short_text_warning``)."""
        config = self.config_
        if not config.long_text.chunked:
            return
        lengths = [len(ids) for ids in self.tokenizer_(list(texts))["input_ids"]]
        special = self.tokenizer_.num_special_tokens_to_add()
        message = short_text_warning(lengths, config.model.max_length, special)
        if message:
            log.warning(message)

    def _windows(self, texts: list[str]) -> list[list[list[int]]]:
        config, long_text = self.config_, self.config_.long_text
        return chunk_windows(
            self.tokenizer_,
            texts,
            config.model.max_length,
            long_text.chunk_stride,
            long_text.max_chunks,
            long_text.chunk_last_window,
        )
