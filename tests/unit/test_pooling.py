import pytest
import torch

from llmclf.pooling import last_token_index, pool_last, pool_mean, position_ids


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


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_and_unpadded_logits_are_equal(tiny_llama, pooling, side):
    from transformers import AutoModelForSequenceClassification

    from llmclf import backbone
    from llmclf.batching import pad_batch
    from llmclf.config import AdapterConfig
    from llmclf.methods.head import head_logits

    tokenizer = backbone.load_tokenizer(tiny_llama, side, append_eos=pooling == "last")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3)
    model = backbone.add_lora(model, AdapterConfig(lora_r=4), "SEQ_CLS").eval()
    texts = ["match goal team", "the bank stock market price shares profit trade of and", "chip"]
    ids = tokenizer(texts)["input_ids"]
    with torch.no_grad():
        alone = torch.cat(
            [head_logits(model, pad_batch([s], tokenizer.pad_token_id), pooling) for s in ids]
        )
        together = head_logits(model, pad_batch(ids, tokenizer.pad_token_id, side), pooling)
    assert torch.allclose(alone, together, atol=1e-5)
