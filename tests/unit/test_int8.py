"""--int8: torchao int8 weights and per-token int8 activations for prediction on CPU."""

import numpy as np
import pytest
import torch

from llmclf import HeadClassifier, InstructClassifier, LlmclfError, TfidfClassifier
from llmclf.runs import load_classifier
from tests.conftest import make_texts
from tests.instruct_models import make_instruct_llama

FAST = dict(max_length=32, batch_size=8, eval_batch_size=8, learning_rate=5e-3)


def quantized(module: torch.nn.Module) -> bool:
    return type(module.weight).__name__ == "Int8Tensor"


def block_linears(blocks: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks' linear layers (of a merged adapter: the base layers, not LoRA's)."""
    return [m for n, m in blocks.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n]


@pytest.fixture(scope="module")
def head_run(tiny_llama, tmp_path_factory):
    texts, labels = make_texts(60)
    clf = HeadClassifier(tiny_llama, progress=False, epochs=2, head_learning_rate=1e-2, **FAST)
    return clf.fit(texts, labels).save(tmp_path_factory.mktemp("int8") / "head")


def test_head_int8_quantizes_the_blocks_and_keeps_the_head(head_run):
    texts, _ = make_texts(40, seed=2)
    full = load_classifier(head_run, progress=False)
    fast = load_classifier(head_run, int8=True, progress=False)
    assert fast.int8_ and not getattr(full, "int8_", False)
    model = fast.model_.base_model.model
    linears = block_linears(model.model.layers)
    assert linears and all(quantized(m) for m in linears)
    head = model.score.modules_to_save["default"]
    assert not quantized(head) and head.weight.dtype == torch.float32
    assert not quantized(model.model.embed_tokens)
    # the merged LoRA went into the weights before quantizing: probabilities stay close
    expected = full.predict_proba(texts)
    got = fast.predict_proba(texts)
    np.testing.assert_allclose(got, expected, atol=0.05)
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.95
    with pytest.raises(LlmclfError, match="cannot be saved"):
        fast.save(head_run.parent / "again")
    assert not (head_run.parent / "again").exists()


@pytest.mark.slow  # over 10 s
def test_instruct_int8_scores_and_generates_close_to_full_precision(tmp_path):
    texts, labels = make_texts(90)
    model = make_instruct_llama(tmp_path / "model")
    options = {**FAST, "max_length": 64, "learning_rate": 1e-2}
    clf = InstructClassifier(model, progress=False, epochs=4, early_stopping_patience=0, **options)
    run = clf.fit(texts, labels).save(tmp_path / "run")
    test, _ = make_texts(24, seed=3)
    expected = clf.predict_proba(test)
    fast = load_classifier(run, int8=True, progress=False)
    causal_lm = fast.model_.base_model.model
    linears = block_linears(causal_lm.model.layers)
    assert linears and all(quantized(m) for m in linears)
    assert not quantized(causal_lm.lm_head)
    np.testing.assert_allclose(fast.predict_proba(test), expected, atol=0.05)
    generated = load_classifier(run, int8=True, progress=False, predict_mode="generate")
    assert np.mean(np.array(generated.predict(test)) == np.array(clf.predict(test))) >= 0.9


def test_int8_is_refused_where_it_does_not_apply(tiny_llama, tmp_path):
    texts, labels = make_texts(30)
    tfidf = TfidfClassifier(progress=False).fit(texts, labels)
    with pytest.raises(LlmclfError, match="head and instruct runs, not tfidf"):
        tfidf.quantize_int8()
    with pytest.raises(LlmclfError, match="not fitted"):
        HeadClassifier(tiny_llama, progress=False).quantize_int8()

    from transformers import AutoModelForSequenceClassification

    from llmclf import backbone
    from llmclf.config import ModelConfig
    from llmclf.int8 import quantize_int8

    four_bit = backbone.load_model(
        AutoModelForSequenceClassification,
        tiny_llama,
        ModelConfig(model=tiny_llama, quantize="4bit", device="cpu"),
        backbone.place("cpu", "float32", tune_malloc=False),
        keep_full_precision=["score"],
        num_labels=2,
    )
    with pytest.raises(LlmclfError, match="base is loaded in 4-bit"):
        quantize_int8(four_bit)
