"""Scoring candidate answers with a causal LM: the prompt runs once, every answer reuses it.

``encode_prompts`` runs a batch of left-padded prompts once and keeps their KV cache and
next-token log-probabilities; ``answer_logprobs`` then scores any number of answers per
prompt with forward passes over the answer tokens only, attending to the cached prompt.
On top of that: ``score_labels`` (one answer per label), ``label_set_posteriors``
(multi-label: a beam search over label sets) and ``greedy_answers`` (generation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmclf.errors import LlmclfError
from llmclf.pooling import position_ids
from llmclf.prompts import AnswerPieces


@dataclass
class EncodedPrompts:
    """A batch of prompts after one forward pass.

    ``cache``: their KV cache; ``next_logprobs``: [batch, vocab] log-probabilities of the
    token after each prompt; ``lengths``: [batch] real (unpadded) lengths; ``mask``:
    [batch, width] attention mask of the left-padded prompts.
    """

    cache: object
    next_logprobs: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor


@torch.no_grad()
def encode_prompts(model, batch: dict[str, torch.Tensor]) -> EncodedPrompts:
    """Run left-padded prompts (``input_ids``, ``attention_mask`` [batch, width]) once."""
    mask = batch["attention_mask"]
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids(mask),
        use_cache=True,
        logits_to_keep=1,
    )
    if out.cache is None:
        raise LlmclfError(f"{type(model).__name__} returns no KV cache: label scoring needs one")
    if hasattr(out.cache, "activate_past_recording"):  # sliding-window layers can be cropped
        out.cache.activate_past_recording()
    return EncodedPrompts(
        cache=out.cache,
        next_logprobs=out.logits[:, -1].float().log_softmax(dim=-1),
        lengths=mask.sum(dim=1),
        mask=mask,
    )


@torch.no_grad()
def answer_logprobs(
    model, prompts: EncodedPrompts, answers: list[list[int]], rows: list[int]
) -> torch.Tensor:
    """Log-probability of every token of every answer given its prompt.

    Args:
        prompts: the encoded prompt batch.
        answers: N token-id lists (each at least one token).
        rows: [N] the prompt each answer follows.

    Returns:
        [N, longest answer] float32: ``log p(answer[t] | prompt, answer[:t])``, 0 at padding.

    The first token's log-prob is read from the prompt pass. The others come in rounds:
    round k feeds the k-th answer of every prompt (``answer[:-1]``, right-padded) after the
    cached prompt, then crops the cache back to the prompt, so the prompt is never re-run
    nor copied per answer, and transformers builds every attention mask itself.
    """
    device = prompts.mask.device
    out = torch.zeros((len(answers), max(len(a) for a in answers)), device=device)
    first = torch.tensor([a[0] for a in answers], device=device)
    out[:, 0] = prompts.next_logprobs[torch.tensor(rows, device=device), first]
    by_row: list[list[int]] = [[] for _ in range(prompts.mask.shape[0])]
    for n, row in enumerate(rows):
        by_row[row].append(n)
    for k in range(max(len(members) for members in by_row)):
        members = {row: ns[k] for row, ns in enumerate(by_row) if len(ns) > k}
        logprobs = _continue(model, prompts, {row: answers[n][:-1] for row, n in members.items()})
        for row, n in members.items():
            answer = torch.tensor(answers[n][1:], dtype=torch.long, device=device)
            steps = torch.arange(len(answer), device=device)
            out[n, 1 : len(answer) + 1] = logprobs[row, steps, answer]
    return out


def _continue(model, prompts: EncodedPrompts, tokens: dict[int, list[int]]) -> torch.Tensor:
    """[batch, longest, vocab] next-token log-probs after feeding ``tokens[row]`` to each
    prompt row (rows left out see padding only); the cache is cropped back afterwards."""
    device = prompts.mask.device
    length = max(len(t) for t in tokens.values())
    if length == 0:
        return torch.zeros((prompts.mask.shape[0], 0, 0), device=device)
    ids = torch.zeros((prompts.mask.shape[0], length), dtype=torch.long, device=device)
    real = torch.zeros_like(ids)
    for row, row_tokens in tokens.items():
        ids[row, : len(row_tokens)] = torch.tensor(row_tokens, device=device)
        real[row, : len(row_tokens)] = 1
    cached = prompts.cache.get_seq_length()
    logits = model(
        input_ids=ids,
        attention_mask=torch.cat([prompts.mask, real], dim=1),
        position_ids=prompts.lengths[:, None] + torch.arange(length, device=device),
        cache=prompts.cache,
        use_cache=True,
    ).logits
    if prompts.cache.get_seq_length() != cached + length:
        raise LlmclfError(f"{type(model).__name__} ignored the prompt cache: cannot score labels")
    prompts.cache.crop(-length)
    return logits.float().log_softmax(dim=-1)


def score_labels(
    model, batch: dict[str, torch.Tensor], pieces: AnswerPieces, normalization: str = "sum"
) -> torch.Tensor:
    """[batch, classes] score of each label's answer: the summed (``sum``) or per-token
    mean (``mean``) log-probability of its tokens, closing tokens included."""
    prompts = encode_prompts(model, batch)
    candidates = [pieces.complete((j,)) for j in range(len(pieces.first))]
    n_rows, n_classes = batch["input_ids"].shape[0], len(candidates)
    logprobs = answer_logprobs(
        model,
        prompts,
        candidates * n_rows,
        [r for r in range(n_rows) for _ in range(n_classes)],
    )
    scores = logprobs.sum(dim=1).view(n_rows, n_classes)
    if normalization == "mean":
        lengths = torch.tensor([len(c) for c in candidates], device=scores.device)
        scores = scores / lengths
    return scores


def label_set_posteriors(
    model, batch: dict[str, torch.Tensor], pieces: AnswerPieces, beam: int = 8
) -> torch.Tensor:
    """Multi-label: [batch, classes] probability that each label is in the answer.

    The answer lists labels in schema order, so a label set is one token sequence and the
    model gives it a probability. A beam search over sets (each step appends one later
    label or closes the answer) collects the most probable sets; a label's probability is
    the share of their probability mass held by the sets that contain it. The search is
    exact when ``beam`` is at least the number of sets of any one size (e.g. 3 labels with
    beam 3), and stops once ``beam`` closed sets beat every open one (an open set only
    loses probability as it grows).
    """
    prompts = encode_prompts(model, batch)
    n_rows, n_classes = batch["input_ids"].shape[0], len(pieces.first)
    open_sets: list[list[tuple[tuple[int, ...], float]]] = [[((), 0.0)] for _ in range(n_rows)]
    closed: list[list[tuple[tuple[int, ...], float]]] = [[] for _ in range(n_rows)]
    while any(open_sets):
        # (row, labels, closes the answer) for every closing or one-label-longer answer
        steps = [
            (row, labels, True) for row, hyps in enumerate(open_sets) for labels, _ in hyps
        ] + [
            (row, (*labels, j), False)
            for row, hyps in enumerate(open_sets)
            for labels, _ in hyps
            for j in range(labels[-1] + 1 if labels else 0, n_classes)
        ]
        answers = [pieces.complete(s) if done else pieces.partial(s) for _, s, done in steps]
        rows = [row for row, _, _ in steps]
        scores = answer_logprobs(model, prompts, answers, rows).sum(dim=1).tolist()
        grown: list[list[tuple[tuple[int, ...], float]]] = [[] for _ in range(n_rows)]
        for (row, labels, done), score in zip(steps, scores):
            (closed[row] if done else grown[row]).append((labels, score))
        for row in range(n_rows):
            best = sorted((s for _, s in closed[row]), reverse=True)[:beam]
            keep = sorted(grown[row], key=lambda h: -h[1])[:beam]
            if len(best) == beam:
                keep = [h for h in keep if h[1] > best[-1]]
            open_sets[row] = keep
    return _membership(closed, n_classes).to(batch["input_ids"].device)


def _membership(closed, n_classes: int) -> torch.Tensor:
    out = torch.zeros((len(closed), n_classes), dtype=torch.float32)
    for row, sets in enumerate(closed):
        scores = torch.tensor([s for _, s in sets], dtype=torch.float64)
        weights = (scores - scores.max()).exp()
        weights /= weights.sum()
        for (labels, _), weight in zip(sets, weights.tolist()):
            for j in labels:
                out[row, j] += weight
    return out.clamp(0.0, 1.0)


@torch.no_grad()
def greedy_answers(
    model, batch: dict[str, torch.Tensor], max_new_tokens: int, stop_ids: list[int], pad_id: int
) -> torch.Tensor:
    """[batch, max_new_tokens] greedily generated token ids after left-padded prompts,
    ``pad_id`` after a stop token (HF ``generate`` with sampling off)."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )
    out = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        generation_config=config,
    )
    new = out[:, batch["input_ids"].shape[1] :]
    padded = torch.full((new.shape[0], max_new_tokens), pad_id, dtype=torch.long, device=new.device)
    padded[:, : new.shape[1]] = new
    return padded
