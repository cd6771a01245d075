"""``--cache-lower-blocks`` (head method, with ``--lora-layers K``): the frozen blocks
below LoRA run once per text, not once per epoch.

With LoRA on the last K of N decoder blocks only, the first N - K blocks have nothing to
train, so the hidden state entering block N - K never changes during training. It is
computed once over every training and validation text (``fill_block_cache``: inference
mode, the training dtype) and kept in memory, one [tokens, hidden] tensor per text; the
training and validation steps then run the top K blocks, the final norm, the pooling and
the head on it (``cached_head_logits``).

Both halves are ``decoder_view``s: shallow copies of the model's own decoder that hold a
slice of the same block objects (the LoRA weights inside are the ones trained), so the
model's own forward runs them (masks, rotary positions, layer types) and nothing is
patched. An architecture whose forward does more to ``inputs_embeds`` than its blocks do
(Granite's forward multiplies them by ``embedding_multiplier``; Gemma's sqrt(hidden) is
inside its embedding layer since transformers 5, so Gemma is fine) is caught by
``check_cached_path``: the run compares the two paths on its first texts and trains the
usual way where they differ. The cache only feeds the training and validation steps: the
run folder and prediction are a normal run's.

Kept in memory rather than in ``features.py``'s disk cache: one [tokens, hidden] tensor a
text is tokens x hidden x 2 bytes in bf16, a pass over the lower blocks costs less than
one epoch, and a disk cache of variable-length bf16 rows would be a second format to
keep (``--lora none``'s pooled features are fixed-size float32 arrays).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from llmclf.batching import forward_overhead_tokens, length_sorted_batches, pad_batch
from llmclf.distributed import world_size
from llmclf.errors import LlmclfError
from llmclf.pooling import POOLERS, position_ids
from llmclf.training import token_dataset

CHECK_TEXTS = 4  # the first training texts both paths run on before training
# the largest difference between the two paths' logits, as a share of the largest logit,
# that still counts as the same computation (the same batch on both sides: rounding only;
# SmolLM2-135M gave exactly 0 in float32 and bf16). The top blocks fed the cached states
# scaled by 1.5 were off by 0.15-0.5 there, scaled by 12 (a Granite-like multiplier) by
# 0.65-2.6
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def check_block_cache(config) -> None:
    """Refuse, in one line each, the runs ``--cache-lower-blocks`` cannot serve (a
    ``HeadClassifierConfig``; before any data or model loads)."""
    if config.adapter.lora_layers is None:
        raise LlmclfError(
            "--cache-lower-blocks caches the frozen blocks below --lora-layers K: give "
            "--lora-layers (with --lora none the pooled features are cached already)"
        )
    if config.long_text.chunked:
        raise LlmclfError(
            "--cache-lower-blocks caches one row of hidden states per text, and --long-text "
            "chunks trains on windows: drop --cache-lower-blocks"
        )
    if config.head.pooling == "token":
        raise LlmclfError(
            "--pooling token learns a token that enters at the embeddings, below the cached "
            "blocks: use --pooling last, mean, max or auto with --cache-lower-blocks"
        )
    if config.head.packing:
        raise LlmclfError(
            "--packing packs token ids, and --cache-lower-blocks trains on cached hidden "
            "states: choose one"
        )


def check_processes() -> None:
    """The cached path calls the decoder's blocks directly, past DDP's wrapper (which
    arms the gradient all-reduce): one process only, refused at fit time (a saved run
    that was trained with the option still predicts under any launcher)."""
    if world_size() > 1:
        raise LlmclfError(
            "--cache-lower-blocks trains one process's model: with several processes "
            "(torchrun / accelerate launch) drop --cache-lower-blocks"
        )


def decoder_view(decoder: torch.nn.Module, blocks: slice, final_norm: bool = True):
    """A shallow copy of ``decoder`` (a ``*Model`` of decoder blocks) that runs only
    ``decoder.layers[blocks]``: the same block objects, a config copy that counts them
    (``num_hidden_layers``, ``layer_types``), and without ``final_norm`` its final norm
    replaced by an identity (so its output is the hidden state entering the next block).
    ``decoder`` itself is unchanged.

    Example:
        >>> lower = decoder_view(model.model, slice(0, 22), final_norm=False)  # doctest: +SKIP
        >>> top = decoder_view(model.model, slice(22, None))  # doctest: +SKIP
        >>> top(inputs_embeds=lower(input_ids=ids).last_hidden_state)  # doctest: +SKIP
    """
    view = copy.copy(decoder)
    view._modules = dict(decoder._modules)  # its own table of the same children
    view.layers = torch.nn.ModuleList(list(decoder.layers)[blocks])
    if not final_norm:
        view.norm = torch.nn.Identity()
    config = copy.copy(decoder.config)
    config.num_hidden_layers = len(view.layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[blocks]
    view.config = config
    return view


def split_decoder(decoder: torch.nn.Module, top_blocks: int):
    """The views below and from block N - ``top_blocks`` of ``decoder``'s N blocks."""
    total = len(decoder.layers)
    if top_blocks >= total:
        raise LlmclfError(
            f"--cache-lower-blocks caches the blocks below --lora-layers {top_blocks}, and "
            f"the model has {total}: nothing is frozen below them; lower --lora-layers or "
            "drop --cache-lower-blocks"
        )
    cut = total - top_blocks
    return decoder_view(decoder, slice(0, cut), final_norm=False), decoder_view(
        decoder, slice(cut, None)
    )


@torch.inference_mode()
def fill_block_cache(
    lower: torch.nn.Module,
    sequences: list[list[int]],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
) -> list[torch.Tensor]:
    """The hidden state entering the first cached-over block, per sequence: a CPU
    [len, hidden] tensor in ``dtype`` (the run's compute dtype), computed by ``lower``
    in length-sorted padded batches under the training's autocast, in eval mode."""
    was_training = lower.training
    lower.eval()
    hidden: list[torch.Tensor | None] = [None] * len(sequences)
    batches = length_sorted_batches(
        [len(s) for s in sequences], batch_size, forward_overhead_tokens(device)
    )
    bar = tqdm(total=len(sequences), desc="cache blocks", unit="ex", disable=not progress)
    try:
        for rows in batches:
            batch = pad_batch([sequences[i] for i in rows], pad_id)
            with training_autocast(device, dtype):
                states = lower_hidden(lower, {k: v.to(device) for k, v in batch.items()})
            for row, index in enumerate(rows):
                hidden[index] = states[row, : len(sequences[index])].to("cpu", dtype).clone()
            bar.update(len(rows))
    finally:
        bar.close()
        lower.train(was_training)
    return hidden


def lower_hidden(lower: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``lower``'s output (the hidden state entering the first block above it), [B, L,
    hidden], for a padded batch of ``input_ids`` and ``attention_mask``."""
    mask = batch["attention_mask"]
    return lower(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids(mask),
        use_cache=False,
    ).last_hidden_state


def training_autocast(device: torch.device, dtype: torch.dtype):
    """The autocast the Trainer trains under (``training.training_arguments``: bf16 on any
    device, fp16 on CUDA), or none in float32."""
    half = dtype == torch.bfloat16 or (dtype == torch.float16 and device.type == "cuda")
    return torch.autocast(device.type, dtype=dtype, enabled=half)


def cache_record(lower, top, hidden: list[torch.Tensor], seconds: float) -> dict:
    """What metrics.json keeps of a filled cache (``block_cache``): the blocks it stands
    in for, its texts, tokens and size, and the seconds filling it took."""
    return {
        "used": True,
        "blocks_cached": len(lower.layers),
        "blocks": len(lower.layers) + len(top.layers),
        "texts": len(hidden),
        "tokens": sum(len(h) for h in hidden),
        "megabytes": round(sum(h.numel() * h.element_size() for h in hidden) / 2**20, 1),
        "fill_seconds": round(seconds, 2),
    }


def cached_datasets(ids: list[list[int]], targets, eval_ids, eval_targets):
    """``token_dataset``s of the training and validation texts (None without any), each
    row with its ``cache_index``: the training texts fill the cache first, then the
    validation ones. Token rows, so the Trainer groups (and ``--batch-tokens`` budgets)
    the batches exactly as it does without the cache."""
    train = token_dataset(ids, targets).add_column("cache_index", list(range(len(ids))))
    if not eval_ids:
        return train, None
    indices = list(range(len(ids), len(ids) + len(eval_ids)))
    return train, token_dataset(eval_ids, eval_targets).add_column("cache_index", indices)


@dataclass
class HiddenStateCollator:
    """A batch of rows of ``token_dataset`` (with a ``cache_index`` column) as the cached
    path reads it: the rows' cached hidden states right-padded with zeros to [B, L,
    hidden], their ``attention_mask``, and their ``input_ids`` (unused by the forward; the
    Trainer counts the real tokens from the mask and the attention probe reads the shape)."""

    hidden: list[torch.Tensor]
    pad_id: int
    multi_label: bool

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch([r["input_ids"] for r in rows], self.pad_id)
        states = [self.hidden[r["cache_index"]] for r in rows]
        padded = states[0].new_zeros((len(rows), batch["input_ids"].shape[1], states[0].shape[1]))
        for row, state in enumerate(states):
            padded[row, : len(state)] = state
        batch["hidden"] = padded
        dtype = torch.float32 if self.multi_label else torch.long
        batch["labels"] = torch.tensor(np.array([r["labels"] for r in rows]), dtype=dtype)
        return batch


def cached_head_logits(
    top: torch.nn.Module, head: torch.nn.Module, batch: dict[str, torch.Tensor], pooling: str
) -> torch.Tensor:
    """``head_logits`` from cached hidden states: the top blocks and the final norm
    (``top``, a ``decoder_view``) on ``batch["hidden"]`` [B, L, hidden], pooled with the
    mask, through the head; [B, num_classes] float32."""
    mask = batch["attention_mask"]
    final = top(
        inputs_embeds=batch["hidden"],
        attention_mask=mask,
        position_ids=position_ids(mask),
        use_cache=False,
    ).last_hidden_state
    pooled = POOLERS[pooling](final, mask)
    return head(pooled.to(next(head.parameters()).dtype)).float()


def paths_agree(difference: float, dtype: torch.dtype) -> bool:
    """Whether a ``path_difference`` is ``dtype``'s rounding (``CHECK_TOLERANCE``)."""
    return difference <= CHECK_TOLERANCE.get(dtype, max(CHECK_TOLERANCE.values()))


def path_difference(full: torch.Tensor, cached: torch.Tensor) -> float:
    """The largest difference between two paths' logits, as a share of the largest logit.

    Example:
        >>> path_difference(torch.tensor([[2.0, -4.0]]), torch.tensor([[2.0, -3.0]]))
        0.25
    """
    scale = full.abs().max().clamp(min=1e-6)
    return float((cached.float() - full.float()).abs().max() / scale)


@torch.no_grad()
def check_cached_path(
    model: torch.nn.Module,
    full: Callable[[dict], torch.Tensor],
    lower: torch.nn.Module,
    top: torch.nn.Module,
    head: torch.nn.Module,
    sequences: list[list[int]],
    pad_id: int,
    pooling: str,
    device: torch.device,
    dtype: torch.dtype,
) -> str | None:
    """Whether the split reproduces ``model``: on one padded batch of ``sequences``, in
    eval mode under the training's autocast, ``full(batch)`` (the usual forward) against
    ``lower`` then ``cached_head_logits`` on its output in ``dtype``. The same batch on
    both sides, so only what the split changes can differ (the cache itself is filled in
    other batches: in bf16 that moves the last bits, as any change of batch does). None
    where they agree (``paths_agree``), else why the cache cannot be used."""
    batch = {k: v.to(device) for k, v in pad_batch(sequences, pad_id).items()}
    was_training = model.training
    model.eval()
    try:
        with training_autocast(device, dtype):
            expected = full(batch)
            hidden = lower_hidden(lower, batch).to(dtype)
            cached = {"hidden": hidden, "attention_mask": batch["attention_mask"]}
            got = cached_head_logits(top, head, cached, pooling)
    finally:
        model.train(was_training)
    difference = path_difference(expected, got)
    if paths_agree(difference, dtype):
        return None
    return (
        f"its logits through the cached blocks differ from the full forward's by "
        f"{difference:.3g} of the largest on {len(sequences)} training texts"
    )


def training_dropout(config) -> list[str]:
    """The dropout rates above zero in a decoder's config: blocks that draw random
    numbers in training give other hidden states each epoch, which no cache reproduces."""
    return [
        name
        for name, value in vars(config).items()
        if ("dropout" in name or name.endswith("pdrop"))
        and not name.startswith("classifier")  # llmclf's head reads no dropout
        and isinstance(value, float)
        and value > 0
    ]
