"""Pure tensor functions that turn per-token hidden states into one vector per text.

They read only the attention mask, never token ids, so they are right whatever the
padding side and whether or not the pad token equals the EOS token. ``append_token``
builds the input of ``--pooling token``: a learned vector after each row's last real
token, whose final hidden state ``pool_last`` then reads.
"""

from __future__ import annotations

import torch


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the final real (mask == 1) token of each row.

    Works for right padding ``[1, 1, 1, 0]`` -> 2 and left padding ``[0, 1, 1, 1]`` -> 3.

    Args:
        attention_mask: [batch, seq] of 0/1.

    Returns:
        [batch] int64 positions.

    Example:
        >>> last_token_index(torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]]))
        tensor([1, 3])
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def pool_last(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the final real token. [batch, seq, dim] -> [batch, dim]."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def pool_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of the real tokens. [batch, seq, dim] -> [batch, dim]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def pool_max(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max over the hidden states of the real tokens. [batch, seq, dim] ->
    [batch, dim]; a padded position never wins, whatever its value.

    Example:
        >>> hidden = torch.tensor([[[1.0, 5.0], [3.0, 0.0], [9.0, 9.0]]])
        >>> pool_max(hidden, torch.tensor([[1, 1, 0]]))
        tensor([[3., 5.]])
    """
    padded = attention_mask.unsqueeze(-1) == 0
    return hidden.masked_fill(padded, float("-inf")).amax(dim=1)


POOLERS = {"last": pool_last, "mean": pool_mean, "max": pool_max}


def append_token(
    embeds: torch.Tensor, attention_mask: torch.Tensor, token: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert ``token`` right after each row's last real token: at index = the number of
    real tokens under right padding (the padding moves one place right), at the end under
    left padding. The mask gains a real position there, so ``last_token_index`` of the new
    mask is the token's index and ``position_ids`` gives it the position after the text.

    Args:
        embeds: [batch, seq, dim] input embeddings.
        attention_mask: [batch, seq] of 0/1.
        token: [dim], cast to ``embeds``' dtype.

    Returns:
        [batch, seq + 1, dim] embeddings and their [batch, seq + 1] mask.

    Example:
        >>> embeds = torch.tensor([[[1.0], [2.0], [0.0]], [[0.0], [3.0], [4.0]]])
        >>> mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right and left padding
        >>> out, mask = append_token(embeds, mask, torch.tensor([9.0]))
        >>> out.squeeze(-1), mask
        (tensor([[1., 2., 9., 0.],
                [0., 3., 4., 9.]]), tensor([[1, 1, 1, 0],
                [0, 1, 1, 1]]))
    """
    seq = embeds.shape[1]
    insert = (last_token_index(attention_mask) + 1).unsqueeze(1)  # [batch, 1]
    positions = torch.arange(seq + 1, device=embeds.device).unsqueeze(0)  # [1, seq + 1]
    # new position j reads old position j before the token and j - 1 after it
    source = (positions - (positions > insert).long()).clamp(max=seq - 1)
    is_token = positions == insert
    gathered = embeds.gather(1, source.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    out = torch.where(is_token.unsqueeze(-1), token.to(embeds.dtype), gathered)
    mask = torch.where(is_token, 1, attention_mask.gather(1, source))
    return out, mask.to(attention_mask.dtype)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them.

    Example:
        >>> position_ids(torch.tensor([[0, 0, 1, 1]]))
        tensor([[0, 0, 0, 1]])
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def pool_packed(hidden: torch.Tensor, segments: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per text of rows that pack several texts (``--packing``): the same
    vectors ``POOLERS[pooling]`` gives each text padded alone.

    Args:
        hidden: [rows, width, dim] final hidden states.
        segments: [rows, width] the number of the text each position holds (0 .. n - 1,
            every number present), -1 for padding.
        pooling: ``last``, ``mean`` or ``max``.

    Returns:
        [n, dim], row i for text i.

    Example:
        >>> hidden = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [0.0]]])
        >>> segments = torch.tensor([[1, 1, 0], [2, 2, -1]])
        >>> pool_packed(hidden, segments, "last").squeeze(-1)
        tensor([3., 2., 5.])
        >>> pool_packed(hidden, segments, "mean").squeeze(-1)
        tensor([3.0000, 1.5000, 4.5000])
    """
    dim = hidden.shape[-1]
    flat, owner = hidden.reshape(-1, dim), segments.reshape(-1)
    real = torch.nonzero(owner >= 0).squeeze(1)
    flat, owner = flat.index_select(0, real), owner.index_select(0, real)
    count = int(owner.max()) + 1 if len(owner) else 0
    if pooling == "last":  # the text's final position: the highest flat index it holds
        places = torch.arange(len(owner), device=owner.device)
        ends = torch.full((count,), -1, device=owner.device, dtype=places.dtype)
        return flat.index_select(0, ends.scatter_reduce(0, owner, places, "amax"))
    if pooling == "mean":
        sums = flat.new_zeros(count, dim).index_add(0, owner, flat)
        sizes = torch.bincount(owner, minlength=count).clamp(min=1)
        return sums / sizes.unsqueeze(1).to(flat.dtype)
    if pooling == "max":
        spread = owner.unsqueeze(1).expand(-1, dim)
        start = flat.new_full((count, dim), float("-inf"))
        return start.scatter_reduce(0, spread, flat, "amax", include_self=False)
    raise ValueError(f"packed rows pool with last, mean or max, not {pooling!r}")
