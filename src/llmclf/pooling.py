"""Pure tensor functions that turn per-token hidden states into one vector per text.

They read only the attention mask, never token ids, so they are right whatever the
padding side and whether or not the pad token equals the EOS token.
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


POOLERS = {"last": pool_last, "mean": pool_mean}


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them.

    Example:
        >>> position_ids(torch.tensor([[0, 0, 1, 1]]))
        tensor([[0, 0, 0, 1]])
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
