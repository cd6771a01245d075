"""Training at the machine's limit (issue 33): token-budget batches and LoRA computing in
bf16 from fp32 master weights, each checked for its numbers, not its speed (speed is
benchmarks/bench_train.py's and bench_step.py's)."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from llmclf.training import TokenBudgetBatches
from tests.conftest import make_texts

LENGTHS = [3, 30, 31, 32, 5, 120, 128, 64, 64, 64, 7, 200, 33, 33, 12, 40]


def epoch_batches(sampler: TokenBudgetBatches, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("budget", [64, 128, 256, 1000])
def test_every_text_once_per_epoch_within_the_budget(budget):
    sampler = TokenBudgetBatches(LENGTHS, budget, seed=3)
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == len(sampler)  # the count the Trainer's schedule reads
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        for batch in batches:
            padded = len(batch) * max(LENGTHS[i] for i in batch)
            assert padded <= budget or len(batch) == 1  # only a too-long text goes over


def test_short_texts_share_a_step_and_long_ones_do_not():
    sampler = TokenBudgetBatches([32] * 64 + [256] * 4, budget=2048, seed=0)
    sizes = sorted(len(b) for b in epoch_batches(sampler, 0))
    assert sizes == [4, 64]  # 64 × 32 = 2048 tokens; 4 × 256 = 1024
    assert sampler.mean_rows == 34.0


def test_epochs_mix_the_texts_and_a_resumed_epoch_repeats_them():
    lengths = [16] * 40
    sampler = TokenBudgetBatches(lengths, budget=64, seed=1)
    first, second = epoch_batches(sampler, 0), epoch_batches(sampler, 1)
    assert first != second
    assert {frozenset(b) for b in first} != {frozenset(b) for b in second}  # new companions
    again = TokenBudgetBatches(lengths, budget=64, seed=1)
    assert epoch_batches(again, 1) == second  # what resuming at epoch 1 sees


def test_batch_tokens_trains_fewer_larger_steps_with_scaled_learning_rates(
    tiny_llama, tmp_path, capsys
):
    """A run with --batch-tokens: its steps hold the budget's texts, the learning rates
    grow by sqrt(mean texts per step / --batch-size), and metrics.json says so."""
    import pandas as pd

    from llmclf.cli import main

    texts, labels = make_texts(90, seed=4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "d.csv", index=False)
    common = ["train", "--model", tiny_llama, "--data", str(tmp_path / "d.csv")]
    common += ["--epochs", "1", "--batch-size", "4", "--max-length", "16"]
    assert main([*common, "--batch-tokens", "256", "--output", str(tmp_path / "budget")]) == 0
    assert "too few to learn from" in capsys.readouterr().err  # a handful of steps: told
    assert main([*common, "--output", str(tmp_path / "fixed")]) == 0
    assert "too few to learn from" not in capsys.readouterr().err
    budget = json.loads((tmp_path / "budget" / "metrics.json").read_text())
    fixed = json.loads((tmp_path / "fixed" / "metrics.json").read_text())
    record = budget["token_budget"]
    assert "token_budget" not in fixed
    assert record["batch_tokens"] == 256
    assert record["mean_texts_per_step"] > 4  # texts of at most 16 tokens: 16+ per step
    assert budget["train_steps"] == record["steps_per_epoch"] < fixed["train_steps"]
    assert record["learning_rate_scale"] == pytest.approx(
        math.sqrt(record["mean_texts_per_step"] / 4), abs=1e-3
    )
    log = json.loads((tmp_path / "budget" / "train_log.json").read_text())
    assert all(np.isfinite(row["loss"]) for row in log if "loss" in row)


def test_batch_tokens_leaves_cached_features_alone(tiny_llama):
    """--lora none trains the head on one cached vector per text: nothing to budget."""
    from llmclf import HeadClassifier

    texts, labels = make_texts(40, seed=5)
    clf = HeadClassifier(
        tiny_llama, lora="none", epochs=1, batch_size=8, batch_tokens=64, progress=False
    ).fit(texts, labels)
    assert clf.train_result_.token_budget is None


def lora_inputs(model) -> list[torch.dtype]:
    """Record the dtype of every LoRA A matrix's input during a forward."""
    seen, hooks = [], []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            hooks.append(module.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype)))
    return seen, hooks


def test_lora_computes_in_bf16_from_fp32_master_weights(tiny_llama):
    """Under bf16 autocast the adapters read the bf16 activations as they are (no copy to
    fp32 and back); their weights, gradients and optimizer state stay fp32, and the loss
    and gradients are those of PEFT's casting path to bf16 precision."""
    from llmclf import HeadClassifier
    from llmclf.labels import LabelSchema
    from llmclf.methods.head import head_logits
    from llmclf.training import adapters_compute_in_autocast

    texts, labels = make_texts(16, seed=6)
    clf2 = HeadClassifier(tiny_llama, dtype="bfloat16", progress=False)
    clf2._config = clf2.resolve_config()
    clf2._build(LabelSchema.from_labels(labels, False))
    model = clf2.model_.train()
    batch = clf2.tokenizer_(texts[:8], padding=True, return_tensors="pt")
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    class Args:
        bf16, fp16 = True, False

    class Float32Args:
        bf16 = fp16 = False

    def loss_and_grads(no_cast: bool):
        model.zero_grad(set_to_none=True)
        seen, hooks = lora_inputs(model)
        context = adapters_compute_in_autocast(model, Args) if no_cast else contextlib.nullcontext()
        with torch.autocast("cpu", dtype=torch.bfloat16), context:
            logits = head_logits(model, batch)
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        for hook in hooks:
            hook.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.item(), grads, set(seen)

    cast_loss, cast_grads, cast_seen = loss_and_grads(False)
    loss, grads, seen = loss_and_grads(True)
    assert cast_seen == {torch.float32} and seen == {torch.bfloat16}
    assert loss == pytest.approx(cast_loss, rel=0.02)
    lora = [n for n in grads if "lora_" in n]
    assert lora and all(grads[n].dtype == torch.float32 for n in grads)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    flat = torch.cat([grads[n].flatten() for n in lora])
    flat_cast = torch.cat([cast_grads[n].flatten() for n in lora])
    assert torch.nn.functional.cosine_similarity(flat, flat_cast, dim=0) > 0.99
    switches = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert switches and all(m.cast_input_dtype_enabled for m in switches)  # PEFT's, after
    with adapters_compute_in_autocast(model, Float32Args):  # float32 training: untouched
        assert all(m.cast_input_dtype_enabled for m in switches)


@pytest.mark.parametrize("length, bucket", [(1, 32), (20, 32), (32, 32), (33, 64), (129, 256)])
def test_attention_lengths_are_probed_in_power_of_two_buckets(length, bucket):
    from llmclf.speed import attention_bucket

    assert attention_bucket(length) == bucket


def test_the_attention_kernel_is_the_one_measured_faster_and_measured_once(monkeypatch, tmp_path):
    """The probe's timings decide (injected here), per length bucket; a second process
    reads them from the cache file instead of measuring again."""
    from torch.nn.attention import SDPBackend

    from llmclf import speed

    calls = []

    def timings(rows, heads, length, head_dim, dtype, reps=3):
        calls.append(length)
        return {"flash": 5.0, "math": 2.0} if length <= 128 else {"flash": 3.0, "math": 9.0}

    monkeypatch.setattr(speed, "measure_attention", timings)
    monkeypatch.setattr(speed, "_attention", {})
    pick = lambda n: speed.attention_backend(8, 4, n, 16, torch.bfloat16, cache=tmp_path)  # noqa: E731
    assert pick(100) == SDPBackend.MATH
    assert pick(120) == SDPBackend.MATH  # same bucket: no new measurement
    assert pick(200) == SDPBackend.FLASH_ATTENTION
    assert calls == [128, 256]
    monkeypatch.setattr(speed, "_attention", {})  # a new process: the cache file answers
    assert pick(64) == SDPBackend.MATH and pick(256) == SDPBackend.FLASH_ATTENTION
    assert calls == [128, 256, 64]
    stored = json.loads((tmp_path / speed.ATTENTION_PROBE_FILE).read_text())
    assert len(stored) == 3 and all(set(t) == {"flash", "math"} for t in stored.values())


def test_the_real_attention_probe_times_both_kernels():
    from llmclf.speed import measure_attention

    times = measure_attention(2, 2, 32, 16, torch.float32, reps=1)
    assert set(times) == {"flash", "math"} and all(t > 0 for t in times.values())
    with torch.inference_mode():  # an evaluation pass may be the first at its shape
        assert set(measure_attention(2, 2, 32, 16, torch.float32, reps=1)) == {"flash", "math"}


def test_training_steps_run_attention_with_the_chosen_kernel(tiny_llama, monkeypatch):
    """The Trainer's forward opens the kernel the probe chose for the batch's shape."""
    from torch.nn.attention import SDPBackend

    from llmclf import HeadClassifier, speed

    asked = []

    def backend(rows, heads, length, head_dim, dtype, cache=None):
        asked.append((rows, length, dtype))
        return SDPBackend.MATH

    monkeypatch.setattr(speed, "attention_backend", backend)
    enabled = []
    real = torch.nn.functional.scaled_dot_product_attention

    def sdpa(*args, **kwargs):
        enabled.append(torch.backends.cuda.flash_sdp_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    texts, labels = make_texts(24, seed=7)
    HeadClassifier(tiny_llama, epochs=1, batch_size=8, progress=False).fit(texts, labels)
    assert asked and all(rows <= 8 and dtype == torch.float32 for rows, _, dtype in asked)
    assert enabled and not any(enabled)  # flash switched off inside the training steps


def test_compile_swaps_each_block_forward_and_gives_it_back(tiny_llama):
    from transformers import AutoModelForSequenceClassification

    from llmclf.training import compiled_blocks

    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3)
    layers = list(model.model.layers)
    with compiled_blocks(model) as blocks:
        assert blocks == layers  # the decoder blocks, nothing else
        assert all("forward" in block.__dict__ for block in blocks)
    assert not any("forward" in block.__dict__ for block in layers)
    with compiled_blocks(model, active=False) as blocks:
        assert blocks == [] and not any("forward" in b.__dict__ for b in layers)


def test_a_compiled_run_learns_what_the_plain_one_does(tiny_llama, tmp_path):
    """--compile: the same training in float32, through compiled blocks, reaches the same
    model to float tolerance; the saved run loads and predicts without compilation."""
    from llmclf import HeadClassifier

    texts, labels = make_texts(24, seed=8)
    options = dict(epochs=1, batch_size=8, max_length=12, validation_fraction=0, progress=False)
    plain = HeadClassifier(tiny_llama, **options).fit(texts, labels)
    compiled = HeadClassifier(tiny_llama, compile=True, **options).fit(texts, labels)
    np.testing.assert_allclose(
        compiled.predict_proba(texts[:6]), plain.predict_proba(texts[:6]), atol=2e-3
    )
    compiled.save(tmp_path / "run")
    loaded = HeadClassifier.load(tmp_path / "run")
    assert list(loaded.predict(texts[:6])) == list(compiled.predict(texts[:6]))


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_packed_rows_give_the_padded_loss_and_gradients(tiny_llama, pooling):
    """--packing: texts of different lengths packed several to a row (block-diagonal
    attention, positions restarting) give, in float32, the loss and every gradient that
    the same texts padded one to a row give."""
    from llmclf import HeadClassifier
    from llmclf.batching import packed_batch, pad_batch
    from llmclf.labels import LabelSchema
    from llmclf.methods.head import head_logits, packed_head_logits

    texts, labels = make_texts(16, seed=9)
    clf = HeadClassifier(tiny_llama, pooling=pooling, progress=False)
    clf._config = clf.resolve_config()
    schema = LabelSchema.from_labels(labels, False)
    clf._build(schema)
    model = clf.model_.train()
    sequences = clf._encode(texts[:8])
    assert len({len(s) for s in sequences}) > 2  # lengths differ: padding is there to save
    target = torch.tensor(schema.encode(labels[:8]))
    packed = packed_batch(sequences, clf.tokenizer_.pad_token_id, width=40)
    assert packed["input_ids"].shape[0] < 8  # several texts share a row

    def loss_and_grads(forward, batch):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(forward(model, batch, pooling), target)
        loss.backward()
        return loss.item(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    loss, grads = loss_and_grads(head_logits, pad_batch(sequences, clf.tokenizer_.pad_token_id))
    packed_loss, packed_grads = loss_and_grads(packed_head_logits, packed)
    assert packed_loss == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == packed_grads.keys() and any("lora_" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], rtol=1e-4, atol=1e-6)


def test_a_packed_run_trains_and_predicts_like_a_padded_one(tiny_llama, tmp_path):
    """A --packing run in float32 learns the model the padded run learns (the same
    batches, so the same steps), records the option, and refuses what it cannot pack."""
    from llmclf import HeadClassifier
    from llmclf.errors import LlmclfError

    texts, labels = make_texts(24, seed=10)
    options = dict(epochs=1, batch_size=8, max_length=16, validation_fraction=0.25, progress=False)
    plain = HeadClassifier(tiny_llama, **options).fit(texts, labels)
    packed = HeadClassifier(tiny_llama, packing=True, **options).fit(texts, labels)
    np.testing.assert_allclose(
        packed.predict_proba(texts[:6]), plain.predict_proba(texts[:6]), atol=1e-4
    )
    packed.save(tmp_path / "run")
    assert "packing: true" in (tmp_path / "run" / "config.yaml").read_text()
    for bad, words in [
        (dict(lora="none"), "--lora none"),
        (dict(pooling="token"), "--pooling token"),
        (dict(long_text="chunks"), "--long-text chunks"),
    ]:
        with pytest.raises(LlmclfError, match=words):
            HeadClassifier(tiny_llama, packing=True, **bad).resolve_config()
