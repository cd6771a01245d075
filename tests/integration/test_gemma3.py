"""The second built-in model, Gemma-3-270M: joined from 4 chunk packages, converted once."""

import pytest
import torch

pytestmark = pytest.mark.integration


def test_gemma3_converts_tokenizes_with_bos_and_eos_and_pools_padding_safely():
    from transformers import AutoModelForSequenceClassification

    from llmclf import backbone
    from llmclf.batching import pad_batch
    from llmclf.config import AdapterConfig, ModelConfig
    from llmclf.methods.head import head_logits

    source = backbone.model_source("gemma3-270m")
    tokenizer = backbone.load_tokenizer(source, "right", append_eos=True)
    ids = tokenizer(["Stocks fell.", "The match ended in a draw after extra time."])["input_ids"]
    assert all(
        row[0] == tokenizer.bos_token_id and row[-1] == tokenizer.eos_token_id for row in ids
    )
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)
    model = backbone.load_model(
        AutoModelForSequenceClassification,
        source,
        ModelConfig(model=source),
        backbone.placement_for(ModelConfig(model=source), source),
        ["score"],
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert type(model).__name__.startswith("Gemma3")
    model = backbone.add_lora(model, AdapterConfig(lora_r=4), "SEQ_CLS").eval()
    with torch.no_grad():
        together = head_logits(model, pad_batch(ids, tokenizer.pad_token_id))
        alone = torch.cat(
            [head_logits(model, pad_batch([row], tokenizer.pad_token_id)) for row in ids]
        )
    assert torch.isfinite(together).all()
    assert torch.allclose(together, alone, atol=1e-4)
