"""Frozen-feature mode (--lora none), truncated bases (--num-layers) and LoRA on the last
blocks only (--lora-layers)."""

import numpy as np
import pytest
import torch

from llmclf import HeadClassifier, LlmclfError
from llmclf.methods import features as features_module
from tests.conftest import make_texts

FAST = dict(max_length=32, batch_size=8, eval_batch_size=8, head_learning_rate=5e-2)


@pytest.fixture()
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCLF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


@pytest.mark.slow  # over 10 s
def test_frozen_mode_trains_only_the_head(tiny_llama, feature_cache, tmp_path):
    texts, labels = make_texts(150)
    clf = HeadClassifier(
        tiny_llama,
        progress=False,
        lora="none",
        epochs=60,
        pooling="mean",
        early_stopping_patience=0,
        **FAST,
    )
    clf.fit(texts, labels)
    from safetensors.torch import load_file

    original = load_file(f"{tiny_llama}/model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(
        clf.model_.model.layers[0].mlp.up_proj.weight, original
    )  # the base is frozen
    assert clf.trainable_params_ == 3 * 64 and clf.total_params_ > 10 * clf.trainable_params_
    assert not any("lora" in n for n, _ in clf.model_.named_parameters())
    assert clf.score(texts, labels) > 0.95  # a linear head fits the cached features
    assert clf.score(*make_texts(60, seed=1)) > 0.75  # and generalises (chance: 0.33)
    assert list(feature_cache.glob("*/chunk-*.npy"))  # features were cached

    folder = clf.save(tmp_path / "run")
    assert (folder / "head.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    loaded = HeadClassifier.load(folder, progress=False)
    probe, _ = make_texts(10, seed=2)
    np.testing.assert_allclose(loaded.predict_proba(probe), clf.predict_proba(probe), atol=1e-6)


def test_frozen_head_loads_into_plain_transformers(tiny_llama, feature_cache, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts, labels = make_texts(30)
    clf = HeadClassifier(tiny_llama, progress=False, lora="none", epochs=2, **FAST).fit(
        texts, labels
    )
    folder = clf.save(tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama, num_labels=3, pad_token_id=tokenizer.pad_token_id
    ).eval()
    model.load_state_dict(load_file(folder / "head.safetensors"), strict=False)
    with torch.no_grad():
        plain = model(**tokenizer(texts[:6], padding=True, return_tensors="pt")).logits.numpy()
    assert np.allclose(plain, clf.predict_logits(texts[:6]), atol=1e-5)


def test_feature_cache_is_reused_and_resumes_after_a_kill(tiny_llama, feature_cache, monkeypatch):
    monkeypatch.setattr(features_module, "CHUNK", 8)
    texts, labels = make_texts(30)
    clf = HeadClassifier(
        tiny_llama, progress=False, lora="none", epochs=1, validation_fraction=0.0, **FAST
    ).fit(texts, labels)
    first = clf._features(texts)
    chunks = sorted(feature_cache.glob("*/chunk-*.npy"))
    assert len(chunks) == 4  # 30 texts in chunks of 8
    chunks[-1].unlink()  # as if killed before the last chunk was written
    calls = []
    original = features_module.run_batches
    monkeypatch.setattr(
        features_module,
        "run_batches",
        lambda seqs, *a, **k: calls.append(len(seqs)) or original(seqs, *a, **k),
    )
    again = clf._features(texts)
    assert calls == [6]  # only the missing chunk was computed
    assert np.allclose(first, again, atol=1e-6)


def test_num_layers_keeps_the_first_blocks(tiny_llama, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    texts, labels = make_texts(30)
    clf = HeadClassifier(tiny_llama, progress=False, num_layers=1, epochs=1, **FAST).fit(
        texts, labels
    )
    assert len(clf.model_.get_base_model().model.layers) == 1
    folder = clf.save(tmp_path / "run")
    loaded = HeadClassifier.load(folder, progress=False)
    np.testing.assert_allclose(
        loaded.predict_proba(texts[:5]), clf.predict_proba(texts[:5]), atol=1e-6
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    plain = AutoPeftModelForSequenceClassification.from_pretrained(
        folder, num_labels=3, num_hidden_layers=1, pad_token_id=tokenizer.pad_token_id
    ).eval()
    with torch.no_grad():
        logits = plain(**tokenizer(texts[:5], padding=True, return_tensors="pt")).logits.numpy()
    assert np.allclose(logits, clf.predict_logits(texts[:5]), atol=1e-5)


def test_num_layers_out_of_range(tiny_llama):
    texts, labels = make_texts(12)
    with pytest.raises(LlmclfError, match="--num-layers must be between 1 and 2"):
        HeadClassifier(tiny_llama, progress=False, num_layers=3, **FAST).fit(texts, labels)


def test_lora_layers_adapts_the_last_blocks_and_backward_stops_below(tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    texts, labels = make_texts(30)
    clf = HeadClassifier(tiny_llama, progress=False, lora_layers=1, epochs=1, **FAST)
    clf.fit(texts, labels)
    lora = {n for n, _ in clf.model_.named_parameters() if "lora_" in n}
    assert lora and all(".layers.1." in n for n in lora)

    # in training mode block 0 runs without autograd: nothing below block 1 keeps activations
    # (fit leaves the adapter merged for prediction; training runs it unmerged)
    clf.model_.unmerge_adapter()
    needs_grad = {}
    blocks = clf.model_.get_base_model().model.layers
    hooks = [
        block.register_forward_hook(
            lambda module, args, out, i=i: needs_grad.__setitem__(i, out[0].requires_grad)
        )
        for i, block in enumerate(blocks)
    ]
    clf.model_.train()
    ids = clf.tokenizer_(texts[:2], return_tensors="pt", padding=True)
    clf.model_(**ids)
    for hook in hooks:
        hook.remove()
    assert needs_grad == {0: False, 1: True}

    folder = clf.save(tmp_path / "run")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3)
    plain = PeftModel.from_pretrained(base, folder)  # adapter_config names the layers
    assert {n for n, _ in plain.named_parameters() if "lora_" in n} == lora
    with pytest.raises(LlmclfError, match="--lora-layers must be between 1 and 2"):
        HeadClassifier(tiny_llama, progress=False, lora_layers=3, **FAST).fit(texts, labels)
    with pytest.raises(LlmclfError, match="needs --lora on"):
        HeadClassifier(tiny_llama, progress=False, lora="none", lora_layers=1).fit(texts, labels)
