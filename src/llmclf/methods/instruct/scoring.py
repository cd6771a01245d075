"""Scoring candidate answers with a causal LM: the prompt runs once, every answer reuses it.

``encode_prompts`` runs a batch of left-padded prompts once and keeps their KV cache and
next-token log-probabilities; ``answer_logprobs`` then scores any number of answers per
prompt with forward passes over the answer tokens only, attending to the cached prompt.
The tokens every prompt of a call starts with (the chat template's system turn, the
instructions, the label list) run once for the whole call: ``shared_prefix``.
On top of that: ``score_labels`` (one answer per label), ``label_set_posteriors``
(multi-label: a beam search over label sets) and ``greedy_answers`` (generation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from llmclf.errors import LlmclfError
from llmclf.methods.instruct.prompts import AnswerPieces
from llmclf.pooling import position_ids


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


@dataclass
class SharedPrefix:
    """The first ``length`` tokens of every prompt, run once: their KV cache at batch 1."""

    length: int
    cache: object

    def expanded(self, rows: int):
        """A fresh copy of the cache for a batch of ``rows`` prompts."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def common_prefix_length(sequences: list[list[int]]) -> int:
    """How many first tokens all ``sequences`` share, leaving at least one token of each.

    Example:
        >>> common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
        2
    """
    shortest = min(len(s) for s in sequences)
    for n in range(shortest - 1):
        if any(s[n] != sequences[0][n] for s in sequences):
            return n
    return max(shortest - 1, 0)


@torch.no_grad()
def shared_prefix(
    model, sequences: list[list[int]], device: torch.device, keys: int
) -> SharedPrefix | None:
    """Run the tokens all prompts start with once (``None`` if there are none or fewer
    than two prompts, or see ``encode_prefix``)."""
    length = common_prefix_length(sequences) if len(sequences) > 1 else 0
    if length == 0:
        return None
    return encode_prefix(model, torch.tensor(sequences[0][:length], device=device), keys)


@torch.no_grad()
def encode_prefix(model, ids: torch.Tensor, keys: int) -> SharedPrefix | None:
    """Run a prefix (``ids`` [length]) at batch size 1; ``None`` where ``model`` cannot
    attend through a mask of ``keys`` keys with a gap of padding after the prefix (see
    ``takes_custom_masks``) or returns no cache."""
    if not takes_custom_masks(model, keys):
        return None
    out = model(input_ids=ids[None], use_cache=True, logits_to_keep=1)
    if out.cache is None or out.cache.get_seq_length() != ids.numel():
        return None
    return SharedPrefix(length=ids.numel(), cache=out.cache)


@torch.no_grad()
def encode_prompts(
    model, batch: dict[str, torch.Tensor], prefix: SharedPrefix | None = None
) -> EncodedPrompts:
    """Run left-padded prompts (``input_ids``, ``attention_mask`` [batch, width]) once;
    with ``prefix``, the batch holds what follows the shared prefix (at least one token
    per row) and attends to its cache: the prompts are then prefix, padding, rest."""
    mask = batch["attention_mask"]
    positions = position_ids(mask)
    cache = None
    if prefix is not None:
        cache = prefix.expanded(mask.shape[0])
        prefix_mask = torch.ones(
            (mask.shape[0], prefix.length), dtype=mask.dtype, device=mask.device
        )
        mask = torch.cat([prefix_mask, mask], dim=1)
        positions = positions + prefix.length
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
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


# Logit entries (fed tokens x vocabulary) one answer pass may hold: 256 MB in float32,
# twice that with the log-softmax.
_PACKED_LOGITS = 2**26


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

    The first token's log-prob is read from the prompt pass. The other tokens of all the
    answers of a prompt are fed together in one forward pass after the cached prompt, as a
    tree: answers sharing a first few tokens (``comp.sys.mac`` and ``comp.sys.ibm``, or
    label sets growing from the same labels) share those tokens, and each fed token attends
    to the prompt and to its own ancestors only. Positions continue the prompt's. The
    cache is cropped back to the prompt afterwards, so the prompt is never re-run nor
    copied per answer. Passes are split to bound the logits' memory; where a custom mask
    cannot be used (a sliding window shorter than prompt plus answers, or an attention
    kernel without masks) each pass carries one answer per prompt.
    """
    device = prompts.mask.device
    out = torch.zeros((len(answers), max(len(a) for a in answers)), device=device)
    first = torch.tensor([a[0] for a in answers], device=device)
    out[:, 0] = prompts.next_logprobs[torch.tensor(rows, device=device), first]
    by_row: list[list[int]] = [[] for _ in range(prompts.mask.shape[0])]
    for n, row in enumerate(rows):
        if len(answers[n]) > 1:
            by_row[row].append(n)
    for members in _passes(model, prompts, by_row, answers):
        logprobs = _continue(
            model, prompts, {row: [answers[n] for n in ns] for row, ns in members.items()}
        )
        for row, ns in members.items():
            for n, answer_logprobs_ in zip(ns, logprobs[row]):
                out[n, 1 : len(answers[n])] = answer_logprobs_
    return out


def _prefixes(answer: list[int]) -> list[tuple[int, ...]]:
    """The fed prefixes of an answer: ``answer[:1]`` ... ``answer[:-1]``, one per fed token."""
    return [tuple(answer[:t]) for t in range(1, len(answer))]


def _passes(model, prompts: EncodedPrompts, by_row: list[list[int]], answers: list[list[int]]):
    """Split every prompt's answers (indices) into passes: ``{row: [answer, ...]}`` each,
    feeding at most ``budget`` distinct prefixes per row (one answer per row if nothing
    packs)."""
    rows, width = prompts.mask.shape
    longest = max((len(answers[n]) - 1 for ns in by_row for n in ns), default=0)
    vocab = model.get_output_embeddings().weight.shape[0]
    budget = max(longest, _PACKED_LOGITS // (vocab * rows))
    packable = takes_custom_masks(model, width + budget)
    start = [0] * rows
    while any(start[row] < len(ns) for row, ns in enumerate(by_row)):
        members: dict[int, list[int]] = {}
        for row, ns in enumerate(by_row):
            fed: set[tuple[int, ...]] = set()
            while start[row] < len(ns):
                new = set(_prefixes(answers[ns[start[row]]])) - fed
                if row in members and (not packable or len(fed) + len(new) > budget):
                    break
                members.setdefault(row, []).append(ns[start[row]])
                fed |= new
                start[row] += 1
        yield members


def takes_custom_masks(model, keys: int) -> bool:
    """Whether ``model`` attends through a 4D mask of ``keys`` keys that we build: its
    attention kernel takes one, and no sliding window is shorter than the keys."""
    window = getattr(model.config, "sliding_window", None)
    kernel = getattr(model.config, "_attn_implementation", None)
    return kernel in ("sdpa", "eager") and (window is None or keys <= window)


def _continue(
    model, prompts: EncodedPrompts, answers: dict[int, list[list[int]]]
) -> dict[int, list[torch.Tensor]]:
    """Feed the answers of ``answers[row]`` after that prompt row as a prefix tree (one
    fed token per distinct prefix); return ``log p(answer[1:])`` per answer. Rows left out
    see padding only; the cache is cropped back afterwards."""
    device = prompts.mask.device
    rows, width = prompts.mask.shape
    trees = {row: _prefix_tree(row_answers) for row, row_answers in answers.items()}
    length = max(len(nodes) for nodes in trees.values())
    ids = torch.zeros((rows, length), dtype=torch.long, device=device)
    fed = torch.zeros_like(ids)
    positions = prompts.lengths[:, None].repeat(1, length)
    # allowed[row, query, key]: a fed token sees the real prompt tokens of its row ...
    allowed = torch.zeros((rows, length, width + length), dtype=torch.bool, device=device)
    allowed[:, :, :width] = prompts.mask[:, None, :].bool()
    for row, nodes in trees.items():
        for i, prefix in enumerate(nodes):
            ids[row, i] = prefix[-1]
            fed[row, i] = 1
            positions[row, i] += len(prefix) - 1
            # ... and its ancestors: the fed tokens of its own prefixes, itself included
            ancestors = [nodes[prefix[:t]] for t in range(1, len(prefix) + 1)]
            allowed[row, i, [width + a for a in ancestors]] = True
    if all(len(row_answers) == 1 for row_answers in answers.values()):
        mask = torch.cat([prompts.mask, fed], dim=1)  # one chain per row: plain causal mask
    else:
        dtype = model.get_input_embeddings().weight.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask = mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
    cached = prompts.cache.get_seq_length()
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        cache=prompts.cache,
        use_cache=True,
    ).logits
    if prompts.cache.get_seq_length() != cached + length:
        raise LlmclfError(f"{type(model).__name__} ignored the prompt cache: cannot score labels")
    prompts.cache.crop(-length)
    logprobs = logits.float().log_softmax(dim=-1)
    out: dict[int, list[torch.Tensor]] = {}
    for row, row_answers in answers.items():
        nodes = trees[row]
        for answer in row_answers:
            at = torch.tensor([nodes[p] for p in _prefixes(answer)], device=device)
            out.setdefault(row, []).append(
                logprobs[row, at, torch.tensor(answer[1:], device=device)]
            )
    return out


def _prefix_tree(answers: list[list[int]]) -> dict[tuple[int, ...], int]:
    """Every distinct fed prefix of the answers, numbered parents first."""
    nodes: dict[tuple[int, ...], int] = {}
    for answer in answers:
        for prefix in _prefixes(answer):
            nodes.setdefault(prefix, len(nodes))
    return nodes


def score_labels(
    model,
    batch: dict[str, torch.Tensor],
    pieces: AnswerPieces,
    normalization: str = "sum",
    prefix: SharedPrefix | None = None,
) -> torch.Tensor:
    """[batch, classes] score of each label's answer: the summed (``sum``) or per-token
    mean (``mean``) log-probability of its tokens, closing tokens included. ``prefix``:
    the batch's prompts follow this shared prefix (``encode_prompts``)."""
    prompts = encode_prompts(model, batch, prefix)
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
    model,
    batch: dict[str, torch.Tensor],
    pieces: AnswerPieces,
    beam: int = 8,
    prefix: SharedPrefix | None = None,
) -> torch.Tensor:
    """Multi-label: [batch, classes] probability that each label is in the answer.

    The answer lists labels in schema order, so a label set is one token sequence and the
    model gives it a probability. A beam search over sets (each step appends one later
    label or closes the answer) collects the most probable sets; a label's probability is
    the share of their probability mass held by the sets that contain it. The search is
    exact when ``beam`` is at least the number of sets of any one size (e.g. 3 labels with
    beam 3), and stops once ``beam`` closed sets beat every open one (an open set only
    loses probability as it grows). ``prefix`` as in ``score_labels``.
    """
    prompts = encode_prompts(model, batch, prefix)
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
