"""``--pooling token``: a learned vector, the decoder-only analogue of BERT's ``[CLS]``,
appended after each text's real tokens; the head reads the final hidden state there.

A causal model's last position is the only one that attends to the whole text, so the
learned token goes last (``pooling.append_token``), fed through ``inputs_embeds``. It is a
submodule of the model (``pool_token``), so it trains in the head's optimizer group, is
saved with the head (PEFT ``modules_to_save``: the run's ``adapter_model.safetensors``)
and is read back on load, as the window scorer of ``--chunk-aggregation attention`` is.

    input_ids ──input embeddings──> [batch, seq, hidden] ──append_token──> [batch, seq + 1, hidden]
              ──the model (inputs_embeds, mask, position ids)──> final hidden state at the token
"""

from __future__ import annotations

import torch

from llmclf.pooling import append_token

POOL_TOKEN_MODULE = "pool_token"


class PoolToken(torch.nn.Module):
    """The learned pooling token: one [hidden] float32 parameter, returned by ``forward``
    (so PEFT's ``modules_to_save`` wrapper hands back its trained copy).

    Example:
        >>> PoolToken(torch.zeros(4))().shape
        torch.Size([4])
    """

    def __init__(self, initial: torch.Tensor):
        super().__init__()
        # float32 like the head, whatever the base's dtype: a bf16 vector would round away
        # small updates at the head's learning rate
        self.weight = torch.nn.Parameter(initial.detach().float().clone())

    def forward(self) -> torch.Tensor:
        return self.weight


def pool_token(model, eos_token_id: int | None) -> PoolToken:
    """A fresh pooling token for ``model`` (a ``*ForSequenceClassification``), on the device
    of its input embeddings.

    It starts as the EOS token's input embedding: ``--pooling last`` reads the hidden state
    of an appended EOS, so training starts exactly where last pooling starts (the pretrained
    model has already learned to summarise a text at its end) and the token only has to
    improve on it. Without an EOS token it starts as the mean input embedding, a vector of
    the embeddings' scale that favours no token.
    """
    weight = model.get_input_embeddings().weight
    if eos_token_id is not None and 0 <= eos_token_id < weight.shape[0]:
        initial = weight[eos_token_id]
    else:
        initial = weight.float().mean(dim=0)
    return PoolToken(initial).to(weight.device)


def token_inputs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input embeddings of ``input_ids`` with ``model``'s pooling token after each row's
    last real token, and their attention mask ([batch, seq + 1, hidden], [batch, seq + 1]).

    ``model``: the ``*ForSequenceClassification`` model (inside PEFT's wrapper, whose
    ``pool_token`` returns the trained copy).
    """
    embeds = model.get_input_embeddings()(input_ids)
    return append_token(embeds, attention_mask, getattr(model, POOL_TOKEN_MODULE)())
