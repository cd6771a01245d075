"""--cache-lower-blocks (issue 33, "caching frozen features"): with --lora-layers K the
blocks below LoRA run once per text, and training runs the top K on their cached output.
Checked for its numbers, not its speed (speed is benchmarks/bench_train.py's)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.conftest import make_texts


def built(model_path: str, labels: list[str], **options):
    """A HeadClassifier with its model built (LoRA on the top block of tiny_llama's two)
    and its LoRA B matrices made non-zero, so the adapters change the forward and every
    LoRA matrix gets a gradient (PEFT starts B at zero)."""
    from llmclf import HeadClassifier
    from llmclf.labels import LabelSchema

    clf = HeadClassifier(model_path, lora_layers=1, progress=False, **options)
    clf._config = clf.resolve_config()
    schema = LabelSchema.from_labels(labels, False)
    clf._build(schema)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in clf.model_.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return clf, schema


def both_paths(clf, texts: list[str]):
    """The usual padded token batch of ``texts`` and the cached path's batch of them (the
    cache filled three texts at a time, so in other batches than the one compared), with
    the top-block view."""
    from llmclf.batching import pad_batch
    from llmclf.methods.block_cache import HiddenStateCollator, fill_block_cache, split_decoder
    from llmclf.methods.head import _sequence_classifier

    decoder = _sequence_classifier(clf.model_).base_model
    lower, top = split_decoder(decoder, 1)
    assert len(decoder.layers) == 2 and decoder.config.num_hidden_layers == 2  # untouched
    assert list(top.layers) == [decoder.layers[1]]  # the trained block itself
    sequences = clf._encode(texts)
    assert len({len(s) for s in sequences}) > 2  # lengths differ: padding on both sides
    pad_id = clf.tokenizer_.pad_token_id
    hidden = fill_block_cache(lower, sequences, pad_id, 3, clf.device_, torch.float32, False)
    rows = [{"input_ids": s, "cache_index": i, "labels": 0} for i, s in enumerate(sequences)]
    return pad_batch(sequences, pad_id), HiddenStateCollator(hidden, pad_id, False)(rows), top


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_the_cached_path_gives_the_full_forwards_logits(tiny_llama, pooling):
    from llmclf.methods.block_cache import cached_head_logits
    from llmclf.methods.head import head_logits

    texts, labels = make_texts(8, seed=11)
    clf, _ = built(tiny_llama, labels, pooling=pooling)
    tokens, cached, top = both_paths(clf, texts)
    assert cached["hidden"].shape[:2] == tokens["input_ids"].shape
    with torch.no_grad():
        clf.model_.eval()
        full = head_logits(clf.model_, tokens, pooling)
        through_cache = cached_head_logits(top, clf._head(), cached, pooling)
    torch.testing.assert_close(through_cache, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_the_cached_path_gives_the_full_loss_and_lora_gradients(tiny_llama, pooling):
    """Training mode, float32: the loss and the gradient of every LoRA matrix and of the
    head through the cached hidden states are the full forward's."""
    from llmclf.methods.block_cache import cached_head_logits
    from llmclf.methods.head import head_logits

    texts, labels = make_texts(8, seed=12)
    clf, schema = built(tiny_llama, labels, pooling=pooling)
    model = clf.model_.train()
    tokens, cached, top = both_paths(clf, texts)
    target = torch.tensor(schema.encode(labels))
    head = clf._head()

    def loss_and_grads(logits_of):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(logits_of(), target)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.item(), grads

    loss, grads = loss_and_grads(lambda: head_logits(model, tokens, pooling))
    cached_loss, cached_grads = loss_and_grads(
        lambda: cached_head_logits(top, head, cached, pooling)
    )
    assert cached_loss == pytest.approx(loss, rel=1e-5)
    lora = [n for n in grads if "lora_" in n]
    assert grads.keys() == cached_grads.keys() and len(lora) >= 7 * 2  # A and B, 7 linears
    assert all(grads[n].abs().sum() > 0 for n in lora)
    for name in grads:
        torch.testing.assert_close(cached_grads[name], grads[name], rtol=1e-4, atol=1e-7)


OPTIONS = dict(
    lora_layers=1, epochs=1, batch_size=8, max_length=16, validation_fraction=0.25, progress=False
)


def test_a_cached_run_learns_and_saves_what_the_usual_run_does(tiny_llama, tmp_path):
    """Float32, same seed: the cached run learns the usual run's model (the same batches,
    so the same steps), saves the same adapter and predicts the same once loaded; the
    cache's figures go to metrics.json."""
    from safetensors.torch import load_file

    from llmclf import HeadClassifier
    from llmclf.run_folder import ADAPTER_WEIGHTS
    from llmclf.runs.train import accounting

    texts, labels = make_texts(40, seed=13)
    plain = HeadClassifier(tiny_llama, **OPTIONS).fit(texts, labels)
    cached = HeadClassifier(tiny_llama, cache_lower_blocks=True, **OPTIONS).fit(texts, labels)
    np.testing.assert_allclose(
        cached.predict_proba(texts[:8]), plain.predict_proba(texts[:8]), atol=1e-4
    )
    record = cached.fit_choices_["block_cache"]
    assert record["used"] and record["blocks_cached"] == 1 and record["blocks"] == 2
    assert record["texts"] == 40 and record["fill_seconds"] >= 0
    assert accounting(cached, 30)["block_cache"] == record
    assert "block_cache" not in plain.fit_choices_
    plain.save(tmp_path / "plain")
    cached.save(tmp_path / "cached")
    files = lambda run: sorted(p.name for p in (tmp_path / run).iterdir())  # noqa: E731
    assert files("cached") == files("plain")
    saved, usual = (load_file(tmp_path / run / ADAPTER_WEIGHTS) for run in ("cached", "plain"))
    assert saved.keys() == usual.keys()
    for name in saved:
        torch.testing.assert_close(saved[name], usual[name], rtol=1e-3, atol=1e-5)
    loaded = HeadClassifier.load(tmp_path / "cached")
    np.testing.assert_allclose(
        loaded.predict_proba(texts[:8]), cached.predict_proba(texts[:8]), atol=1e-6
    )


def test_auto_pooling_caches_for_each_candidate_and_keeps_both_records(tiny_llama):
    from llmclf import HeadClassifier

    texts, labels = make_texts(40, seed=14)
    clf = HeadClassifier(tiny_llama, pooling="auto", cache_lower_blocks=True, **OPTIONS)
    clf.fit(texts, labels)
    assert clf.fit_choices_["block_cache"]["used"]
    assert clf.fit_choices_["pooling_auto"]["chosen"] in ("last", "mean")


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(), "give --lora-layers"),
        (dict(lora_layers=1, long_text="chunks"), "--long-text chunks"),
        (dict(lora_layers=1, pooling="token"), "--pooling token"),
        (dict(lora_layers=1, packing=True), "--packing"),
    ],
)
def test_what_the_cache_cannot_serve_is_refused_in_one_line(tiny_llama, options, words):
    from llmclf import HeadClassifier
    from llmclf.errors import LlmclfError

    with pytest.raises(LlmclfError, match=words) as refused:
        HeadClassifier(tiny_llama, cache_lower_blocks=True, **options).resolve_config()
    assert "\n" not in str(refused.value)


def test_lora_dropout_and_compile_are_allowed(tiny_llama):
    """LoRA's dropout lives in the top blocks, which train as usual; --compile compiles
    the same block objects the cached path runs."""
    from llmclf import HeadClassifier

    config = HeadClassifier(
        tiny_llama, cache_lower_blocks=True, lora_layers=1, lora_dropout=0.1, compile=True
    ).resolve_config()
    assert config.head.cache_lower_blocks


def test_fit_refuses_several_processes_and_lora_on_every_block(tiny_llama, monkeypatch):
    from llmclf import HeadClassifier
    from llmclf.errors import LlmclfError

    texts, labels = make_texts(12, seed=15)
    every = HeadClassifier(tiny_llama, **{**OPTIONS, "lora_layers": 2}, cache_lower_blocks=True)
    with pytest.raises(LlmclfError, match="nothing is frozen below them"):
        every.fit(texts, labels)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LlmclfError, match="several processes"):
        HeadClassifier(tiny_llama, cache_lower_blocks=True, **OPTIONS).fit(texts, labels)


def test_a_model_the_cache_cannot_reproduce_trains_the_usual_way(tiny_llama, monkeypatch, caplog):
    """Where the two paths disagree on the first texts (here: the comparison told so), one
    warning line, and the run is the usual one: the same model as without the option."""
    from llmclf import HeadClassifier
    from llmclf.methods import block_cache, head

    texts, labels = make_texts(40, seed=16)
    plain = HeadClassifier(tiny_llama, **OPTIONS).fit(texts, labels)
    monkeypatch.setattr(block_cache, "paths_agree", lambda difference, dtype: False)
    filled = []
    monkeypatch.setattr(head, "fill_block_cache", lambda *a, **k: filled.append(1))
    with caplog.at_level(logging.WARNING, logger="llmclf"):
        clf = HeadClassifier(tiny_llama, cache_lower_blocks=True, **OPTIONS).fit(texts, labels)
    warnings = [r.getMessage() for r in caplog.records if "--cache-lower-blocks" in r.getMessage()]
    assert len(warnings) == 1 and "training the usual way" in warnings[0]
    assert "LlamaModel" in warnings[0]
    assert not filled  # checked before the cache is filled
    record = clf.fit_choices_["block_cache"]
    assert record["used"] is False and "differ from the full forward" in record["reason"]
    np.testing.assert_allclose(clf.predict_proba(texts[:8]), plain.predict_proba(texts[:8]))


def test_dropout_in_the_blocks_rules_the_cache_out():
    from transformers import LlamaConfig

    from llmclf.methods.block_cache import training_dropout

    assert training_dropout(LlamaConfig()) == []
    assert training_dropout(LlamaConfig(attention_dropout=0.1)) == ["attention_dropout"]
