import pytest
import torch

from llmclf.pooling import (
    append_token,
    last_token_index,
    pool_last,
    pool_max,
    pool_mean,
    position_ids,
)


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


def test_last_token_index_ignores_token_ids_when_pad_equals_eos():
    # ids: text, EOS(=2) appended, then padding with the same id 2
    ids = torch.tensor([[7, 8, 2, 2, 2], [7, 8, 9, 10, 2]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    pooled = pool_last(hidden, mask)
    assert torch.equal(pooled[0], hidden[0, 2])  # the appended EOS, not the last pad
    assert torch.equal(pooled[1], hidden[1, 4])
    # what a pad-id based rule would do instead: (ids != pad).argmax picks position 1
    assert ((ids != 2).long() * torch.arange(5)).argmax(1).tolist()[0] == 1


def test_pool_mean_skips_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[100.0], [2.0], [4.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert pool_mean(hidden, mask).squeeze(-1).tolist() == [2.0, 3.0]


@pytest.mark.parametrize(
    "mask",
    [[[1, 1, 0, 0], [1, 1, 1, 1]], [[0, 0, 1, 1], [1, 1, 1, 1]]],
    ids=["right", "left"],
)
def test_pool_max_never_lets_a_padded_position_win(mask):
    mask = torch.tensor(mask)
    hidden = -torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    hidden[mask == 0] = float("inf")  # padding louder than any real token, even infinite
    expected = torch.stack([hidden[row][mask[row] == 1].amax(dim=0) for row in range(2)])
    assert torch.equal(pool_max(hidden, mask), expected)
    assert torch.isfinite(pool_max(hidden, mask)).all()


def test_append_token_goes_right_after_the_last_real_token_on_either_side():
    embeds = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2) + 1
    token = torch.tensor([-5.0, -6.0])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out, mask = append_token(embeds, right, token)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert torch.equal(out[0, :2], embeds[0, :2]) and torch.equal(out[0, 2], token)
    assert torch.equal(out[0, 3:], embeds[0, 2:])  # the padding moved one place right
    assert torch.equal(out[1, :4], embeds[1]) and torch.equal(out[1, 4], token)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out, mask = append_token(embeds, left, token)
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert torch.equal(out[:, :4], embeds) and (out[:, 4] == token).all()
    # the token is what last-token pooling reads, at the position after the text
    assert last_token_index(mask).tolist() == [4, 4]
    assert position_ids(mask)[:, -1].tolist() == [2, 4]


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["pad", "pad=eos"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "token"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_and_unpadded_logits_are_equal(tiny_llama, pooling, side, pad_is_eos):
    from transformers import AutoModelForSequenceClassification

    from llmclf import backbone
    from llmclf.batching import pad_batch
    from llmclf.config import AdapterConfig
    from llmclf.methods.head import head_logits
    from llmclf.methods.pool_token import POOL_TOKEN_MODULE, PoolToken

    tokenizer = backbone.load_tokenizer(tiny_llama, side, append_eos=pooling == "last")
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3)
    extra = None
    if pooling == "token":  # a token unlike any input embedding
        model.add_module(POOL_TOKEN_MODULE, PoolToken(torch.randn(model.config.hidden_size)))
        extra = [POOL_TOKEN_MODULE]
    model = backbone.add_lora(model, AdapterConfig(lora_r=4), "SEQ_CLS", extra).eval()
    texts = ["match goal team", "the bank stock market price shares profit trade of and", "chip"]
    ids = tokenizer(texts)["input_ids"]
    with torch.no_grad():
        alone = torch.cat(
            [head_logits(model, pad_batch([s], tokenizer.pad_token_id), pooling) for s in ids]
        )
        together = head_logits(model, pad_batch(ids, tokenizer.pad_token_id, side), pooling)
    assert torch.allclose(alone, together, atol=1e-5)
