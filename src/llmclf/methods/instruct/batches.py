"""Instruct training batches: prompt + answer rows with the loss on the answer only, the
prompts' shared prefix run once per batch, and the answer-token loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmclf.batching import pad_batch
from llmclf.distributed import is_wrapped
from llmclf.labels import LabelSchema
from llmclf.methods.instruct.scoring import common_prefix_length, takes_custom_masks
from llmclf.pooling import position_ids

IGNORE_INDEX = -100  # label of prompt and padding tokens: no loss


def answer_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token logits over the last ``answer_width + 1`` positions of left-padded
    prompt + answer rows, the only ones the loss reads (the vocabulary projection of
    the prompt positions is skipped).

    With ``prefix_ids`` in the batch (``InstructCollator``: the tokens every row starts
    with), the rows hold what follows it: the prefix runs once, at batch size 1, and every
    row attends to its KV cache (gradients flow back through it), the same logits as the
    whole rows give. Where the model cannot take that (gradient checkpointing, a sliding
    window shorter than the rows, an attention kernel without masks) the rows are joined
    back first.

    Returns:
        [batch, answer_width + 1, vocab].
    """
    keep = int(batch["answer_width"]) + 1
    # the kept positions as an index (a copy) rather than a slice (a view): matmul will
    # not fold a non-contiguous input that requires grad into one mm, so the vocabulary
    # projection of a slice expands and copies the whole weight per row (~1 s of a bf16
    # step of 8 rows on a 2-core CPU, measured)
    last = lambda width: torch.arange(width - keep, width, device=batch["input_ids"].device)  # noqa: E731
    prefix = batch.get("prefix_ids")
    if prefix is not None and prefix.numel() > 0:
        rows, width = batch["input_ids"].shape
        cache = None
        # inside DDP the rows are joined: two forward calls per backward through its
        # wrapper would arm its gradient all-reduce twice
        if (
            not is_wrapped(model)
            and not getattr(model, "is_activation_checkpointing", False)
            and takes_custom_masks(model, prefix.numel() + width)
        ):
            cache = model(input_ids=prefix[None], use_cache=True, logits_to_keep=1).cache
        if cache is not None:
            cache.batch_repeat_interleave(rows)
            mask = batch["attention_mask"]
            ones = torch.ones((rows, prefix.numel()), dtype=mask.dtype, device=mask.device)
            return model(
                input_ids=batch["input_ids"],
                attention_mask=torch.cat([ones, mask], dim=1),
                position_ids=position_ids(mask) + prefix.numel(),
                cache=cache,
                use_cache=True,
                logits_to_keep=last(width),
            ).logits
        batch = join_prefix(batch)
    mask = batch["attention_mask"]
    return model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids(mask),
        logits_to_keep=last(batch["input_ids"].shape[1]),
        use_cache=False,
    ).logits


def join_prefix(batch: dict[str, torch.Tensor], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """The batch with its ``prefix_ids`` put back in front of every row, left-padded:
    ``input_ids``, ``attention_mask`` and (when present) ``labels``."""
    prefix = batch["prefix_ids"].tolist()
    mask = batch["attention_mask"].bool()
    joined = {k: v for k, v in batch.items() if k != "prefix_ids"}
    ids = [prefix + row[m].tolist() for row, m in zip(batch["input_ids"].cpu(), mask.cpu())]
    joined.update(pad_batch(ids, pad_id, side="left"))
    if "labels" in batch and batch["labels"].dim() == 2:  # per-token labels: shift them too
        width = joined["input_ids"].shape[1]
        labels = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        for row, (values, m) in enumerate(zip(batch["labels"].cpu(), mask.cpu())):
            labels[row, width - int(m.sum()) :] = values[m]
        joined["labels"] = labels
    device = batch["input_ids"].device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in joined.items()}


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens; prompt and padding carry ``IGNORE_INDEX``.

    Args:
        logits: [batch, k, vocab] from ``answer_logits`` (position t predicts t + 1).
        labels: [batch, width] token ids, left-padded like the inputs.
    """
    targets = labels[:, -(logits.shape[1] - 1) :]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
    )


@dataclass
class InstructCollator:
    """Left-pads rows. Training rows (``labels`` per token) become answer batches;
    evaluation rows (``target``: the class) become prompt batches for label scoring.

    The tokens all the rows' prompts start with (system turn, instructions, label list)
    are taken off every row and given once as ``prefix_ids`` (``share_prefix``), so the
    model runs them once per batch, not once per row (``answer_logits``)."""

    pad_id: int
    multi_label: bool
    share_prefix: bool = True

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [r["input_ids"] for r in rows]
        prompt_lengths = [len(r["input_ids"]) - r.get("answer_length", 0) for r in rows]
        cut = 0
        if self.share_prefix and len(rows) > 1:  # keep at least the prompts' last token
            cut = min(common_prefix_length(sequences), min(prompt_lengths) - 1)
        batch = pad_batch([s[cut:] for s in sequences], self.pad_id, side="left")
        batch["prefix_ids"] = torch.tensor(sequences[0][:cut], dtype=torch.long)
        if "target" in rows[0]:
            dtype = torch.float32 if self.multi_label else torch.long
            batch["labels"] = torch.tensor(np.array([r["target"] for r in rows]), dtype=dtype)
            return batch
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for row, r in enumerate(rows):
            labels[row, labels.shape[1] - len(r["labels"]) + cut :] = torch.tensor(
                r["labels"][cut:]
            )
        batch["labels"] = labels
        batch["answer_width"] = torch.tensor(max(r["answer_length"] for r in rows))
        return batch


def label_sets(schema: LabelSchema, labels: list) -> list[tuple[int, ...]]:
    """Each example's classes as sorted index tuples (one index for single-label)."""
    encoded = schema.encode(labels)
    if not schema.multi_label:
        return [(int(i),) for i in encoded]
    return [tuple(int(i) for i in np.flatnonzero(row)) for row in encoded]
