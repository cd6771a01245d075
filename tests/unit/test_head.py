import numpy as np
import pytest
import torch

from llmclf import HeadClassifier, LlmclfError
from tests.conftest import make_texts

FAST = dict(
    epochs=3,
    batch_size=8,
    max_length=32,
    learning_rate=5e-3,
    head_learning_rate=1e-2,
    eval_batch_size=8,
)


@pytest.fixture(scope="module")
def fitted(tiny_llama):
    texts, labels = make_texts(60)
    clf = HeadClassifier(tiny_llama, progress=False, **FAST)
    return clf.fit(texts, labels)


def test_one_training_step_changes_lora_and_head_but_not_the_base(tiny_llama):
    from llmclf.labels import LabelSchema
    from llmclf.methods.head import PaddingCollator, head_logits

    texts, labels = make_texts(8)
    schema = LabelSchema.from_labels(labels, multi_label=False)
    clf = HeadClassifier(tiny_llama, progress=False, lora_dropout=0.0)
    clf._build(schema)
    model = clf.model_
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trainable) and any(
        "score.modules_to_save" in n for n in trainable
    )
    assert not any("base_layer" in n or "embed_tokens" in n for n in trainable)

    batch = PaddingCollator(clf.tokenizer_.pad_token_id, False)(
        [
            {"input_ids": ids, "labels": y}
            for ids, y in zip(clf._encode(texts), schema.encode(labels))
        ]
    )
    optimizer = clf._optimizer()
    model.train()
    loss = torch.nn.functional.cross_entropy(head_logits(model, batch), batch["labels"])
    loss.backward()
    optimizer.step()

    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any("lora_B" in n for n in changed)  # B starts at zero, so A gets no gradient yet
    assert any("score.modules_to_save" in n for n in changed)
    assert changed <= trainable  # the frozen base (and the original head copy) never move


def test_fit_predict_proba_follow_classes(fitted):
    texts, labels = make_texts(30, seed=1)
    proba = fitted.predict_proba(texts)
    assert proba.shape == (30, 3)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert list(fitted.classes_) == ["money", "sport", "tech"]
    predicted = fitted.predict(texts)
    assert predicted == [fitted.classes_[i] for i in proba.argmax(axis=1)]
    # the synthetic classes are separable: held-out accuracy well above chance (1/3)
    assert fitted.score(texts, labels) > 0.75
    assert isinstance(fitted.predict(texts[0]), str)
    assert fitted.predict_proba(texts[0]).shape == (3,)


def test_accounting_counts_trainable_and_total(fitted):
    assert 0 < fitted.trainable_params_ < fitted.total_params_
    lora_and_head = sum(p.numel() for p in fitted.model_.parameters() if p.requires_grad)
    assert fitted.trainable_params_ == lora_and_head


def test_save_load_gives_identical_predictions(fitted, tmp_path):
    texts, _ = make_texts(20, seed=2)
    fitted.save(tmp_path / "run")
    loaded = HeadClassifier.load(tmp_path / "run", progress=False)
    # a loaded full-precision run has its adapter merged into the weights: float rounding
    np.testing.assert_allclose(
        loaded.predict_proba(texts), fitted.predict_proba(texts), rtol=0, atol=1e-6
    )
    assert (loaded.trainable_params_, loaded.total_params_) == (
        fitted.trainable_params_,
        fitted.total_params_,
    )
    assert loaded.predict(texts) == fitted.predict(texts)


def test_a_just_trained_bf16_model_predicts_as_its_saved_run_loaded_again(tiny_llama, tmp_path):
    """After fit the adapter is merged into the (bf16) base, as a loaded run's is: the
    test metrics written by `llmclf train` are what a user of the saved run gets, and the
    fp32 LoRA matmuls no longer run beside the bf16 base."""
    from peft.tuners.lora import LoraLayer

    texts, labels = make_texts(40, seed=3)
    clf = HeadClassifier(tiny_llama, progress=False, dtype="bfloat16", **FAST).fit(texts, labels)
    layers = [m for m in clf.model_.modules() if isinstance(m, LoraLayer)]
    assert layers and all(layer.merged for layer in layers)
    trained = clf.predict_proba(texts)
    clf.save(tmp_path / "run")
    loaded = HeadClassifier.load(tmp_path / "run", progress=False)
    np.testing.assert_array_equal(loaded.predict_proba(texts), trained)


def test_plain_peft_load_gives_the_same_logits(fitted, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    folder = fitted.save(tmp_path / "run")
    texts, _ = make_texts(12, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # the saved tokenizer reproduces llmclf's preprocessing: the appended EOS
    assert tokenizer(texts)["input_ids"] == fitted._encode(texts)
    assert all(ids[-1] == tokenizer.eos_token_id for ids in tokenizer(texts)["input_ids"])
    model = AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = model(**batch).logits.numpy()
    assert np.allclose(plain, fitted.predict_logits(texts), atol=1e-5)


def test_unknown_option_is_refused():
    with pytest.raises(LlmclfError, match="no option lora_rank"):
        HeadClassifier("x", lora_rank=4)


def test_multi_label_fit_tunes_thresholds(tiny_llama):
    rng = np.random.default_rng(0)
    texts, labels = [], []
    base_texts, base_labels = make_texts(90, seed=4)
    for i in range(0, 90, 2):
        pair = sorted({base_labels[i], base_labels[i + 1]})
        texts.append(
            base_texts[i] + " " + base_texts[i + 1] if rng.random() < 0.6 else base_texts[i]
        )
        labels.append(pair if texts[-1] != base_texts[i] else [base_labels[i]])
    clf = HeadClassifier(tiny_llama, progress=False, **FAST).fit(texts, labels)
    assert clf.schema_.multi_label
    assert len(clf.schema_.thresholds) == 3 and all(0 < t < 1 for t in clf.schema_.thresholds)
    proba = clf.predict_proba(texts[:5])
    assert proba.shape == (5, 3) and not np.allclose(proba.sum(axis=1), 1.0)
    predicted = clf.predict(texts[:5])
    assert all(isinstance(p, list) for p in predicted)
    expected = [
        [c for c, p, t in zip(clf.classes_, row, clf.schema_.thresholds) if p >= t] for row in proba
    ]
    assert predicted == expected


def test_same_seed_gives_the_same_model(tiny_llama):
    texts, labels = make_texts(30)
    probe, _ = make_texts(6, seed=9)
    options = dict(FAST, epochs=1, validation_fraction=0.0)
    first = HeadClassifier(tiny_llama, progress=False, seed=7, **options).fit(texts, labels)
    second = HeadClassifier(tiny_llama, progress=False, seed=7, **options).fit(texts, labels)
    third = HeadClassifier(tiny_llama, progress=False, seed=8, **options).fit(texts, labels)
    assert np.array_equal(first.predict_proba(probe), second.predict_proba(probe))
    assert not np.array_equal(first.predict_proba(probe), third.predict_proba(probe))


def test_balanced_class_weights():
    from llmclf.losses import balanced_weights

    weights = balanced_weights(np.array([0, 0, 0, 1]), multi_label=False)
    assert torch.allclose(weights, torch.tensor([4 / 6, 4 / 2]))
    per_label = balanced_weights(np.array([[1, 0], [1, 1], [1, 0], [0, 0]]), multi_label=True)
    assert torch.allclose(per_label, torch.tensor([1 / 3, 3.0]))


def test_mean_pooling_gradient_checkpointing_and_class_weights_train(tiny_llama, tmp_path):
    texts, labels = make_texts(40)
    clf = HeadClassifier(
        tiny_llama,
        progress=False,
        pooling="mean",
        gradient_checkpointing=True,
        class_weights="balanced",
        **dict(FAST, epochs=1),
    )
    clf.fit(texts, labels)
    assert clf.model_.get_base_model().model.is_gradient_checkpointing
    # mean pooling does not append EOS
    assert all(ids[-1] != clf.tokenizer_.eos_token_id for ids in clf._encode(texts))
    clf.save(tmp_path / "mean")
    loaded = HeadClassifier.load(tmp_path / "mean", progress=False)
    np.testing.assert_allclose(
        loaded.predict_proba(texts[:5]), clf.predict_proba(texts[:5]), atol=1e-6
    )


def test_fixed_threshold_for_multi_label(tiny_llama):
    texts, labels = make_texts(30)
    multi = [[lab] if i % 3 else [lab, "extra"] for i, lab in enumerate(labels)]
    clf = HeadClassifier(tiny_llama, progress=False, threshold="0.3", **dict(FAST, epochs=1)).fit(
        texts, multi
    )
    assert clf.schema_.thresholds == [0.3] * 4


def test_numpy_labels_are_single_label(tiny_llama):
    texts, labels = make_texts(24)
    codes = np.array([{"sport": 0, "money": 1, "tech": 2}[lab] for lab in labels])
    clf = HeadClassifier(tiny_llama, progress=False, **dict(FAST, epochs=1)).fit(
        np.array(texts), codes
    )
    assert not clf.schema_.multi_label and list(clf.classes_) == ["0", "1", "2"]
    assert set(clf.predict(texts[:4])) <= {"0", "1", "2"}
