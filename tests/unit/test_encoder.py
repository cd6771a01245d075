import json

import numpy as np
import pytest
import torch

from llmclf import LabelSchema, LlmclfError
from llmclf.cli import main
from llmclf.methods.encoder import ENCODER_DEFAULTS, EncoderClassifier
from tests.conftest import make_texts

# the tiny random BERT needs high learning rates to learn the synthetic classes quickly
FAST = dict(
    epochs=4,
    batch_size=4,
    learning_rate=5e-3,
    head_learning_rate=5e-2,
    warmup_ratio=0.0,
    max_length=32,
    eval_batch_size=8,
    early_stopping_patience=0,
)


@pytest.fixture(scope="module")
def fitted(tiny_bert):
    texts, labels = make_texts(90)
    return EncoderClassifier(tiny_bert, progress=False, **FAST).fit(texts, labels)


def test_fit_learns_and_predict_proba_follows_classes(fitted):
    texts, labels = make_texts(60, seed=5)
    proba = fitted.predict_proba(texts)
    assert proba.shape == (60, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert list(fitted.classes_) == ["money", "sport", "tech"]
    assert fitted.predict(texts) == [fitted.classes_[i] for i in proba.argmax(axis=1)]
    assert fitted.score(texts, labels) > 0.8  # separable synthetic classes
    assert isinstance(fitted.predict(texts[0]), str)


def test_every_weight_is_trained(fitted, tiny_bert):
    from transformers import AutoModel

    assert fitted.trainable_params_ == fitted.total_params_
    original = AutoModel.from_pretrained(tiny_bert)
    tuned = fitted.model_.base_model
    layer = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(original.state_dict()[layer], tuned.state_dict()[layer])


def test_padding_does_not_change_the_logits(fitted):
    texts = ["bank stock market price", "goal"]
    together = fitted.predict_logits(texts)
    alone = np.concatenate([fitted.predict_logits([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)


def test_save_load_and_plain_transformers_give_the_same_logits(fitted, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = fitted.save(tmp_path / "run")
    texts, _ = make_texts(20, seed=2)
    loaded = EncoderClassifier.load(folder, progress=False)
    assert np.array_equal(loaded.predict_proba(texts), fitted.predict_proba(texts))
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert model.config.id2label == {0: "money", 1: "sport", 2: "tech"}
    batch = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = model(**batch).logits.numpy()
    assert np.allclose(plain, fitted.predict_logits(texts), atol=1e-5)


def test_multi_label_fit_tunes_thresholds(tiny_bert):
    base_texts, base_labels = make_texts(120, seed=4)
    texts, labels = [], []
    for i in range(0, 120, 2):
        if i % 4 == 0:
            texts.append(base_texts[i] + " " + base_texts[i + 1])
            labels.append(sorted({base_labels[i], base_labels[i + 1]}))
        else:
            texts.append(base_texts[i])
            labels.append([base_labels[i]])
    clf = EncoderClassifier(tiny_bert, progress=False, **FAST).fit(texts, labels)
    assert clf.schema_.multi_label and len(clf.schema_.thresholds) == 3
    proba = clf.predict_proba(texts[:6])
    assert proba.shape == (6, 3) and not np.allclose(proba.sum(axis=1), 1.0)
    expected = [
        [c for c, p, t in zip(clf.classes_, row, clf.schema_.thresholds) if p >= t] for row in proba
    ]
    assert clf.predict(texts[:6]) == expected


def test_unset_options_take_the_encoder_defaults():
    config = EncoderClassifier().resolve_config()
    model_cfg, train_cfg = config.model, config.train
    assert model_cfg.model == ENCODER_DEFAULTS["model"] == "minilm-l6"
    assert train_cfg.learning_rate == ENCODER_DEFAULTS["learning_rate"]
    assert EncoderClassifier(learning_rate=3e-5).resolve_config().train.learning_rate == 3e-5


@pytest.mark.parametrize(
    "options,message",
    [
        ({"quantize": "4bit"}, "--quantize does not apply to --method encoder"),
        ({"model": "smollm2-135m"}, "smollm2-135m is a causal LM: use --method head"),
    ],
)
def test_options_that_do_not_apply_are_refused(options, message):
    with pytest.raises(LlmclfError, match=message):
        EncoderClassifier(**options).fit(["a b", "c d"], ["x", "y"])


def test_cli_trains_an_encoder_run_and_refuses_lora_flags(tiny_bert, tmp_path, capsys):
    import pandas as pd

    texts, labels = make_texts(60)
    data = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    run = tmp_path / "run"
    flags = ["--epochs", "1", "--max-length", "32", "--batch-size", "8"]
    args = ["train", "--method", "encoder", "--model", tiny_bert, "--data", str(data)]
    assert main([*args, "--lora-r", "4", "--output", str(run), *flags]) == 2
    assert "--lora-r does not apply to --method encoder" in capsys.readouterr().err
    assert main([*args, "--output", str(run), *flags]) == 0
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "labels.json", "config.yaml"} <= names
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "encoder" and metrics["n"] == 6
    assert metrics["trainable_params"] == metrics["total_params"]
    assert main(["evaluate", str(run), "--eval-batch-size", "4"]) == 0


def test_encoder_layers_keeps_the_first_layers_and_saves_loadably(tiny_bert, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    texts, labels = make_texts(30)
    options = {**FAST, "epochs": 1}
    with pytest.raises(LlmclfError, match="the encoder has only 2"):
        EncoderClassifier(tiny_bert, progress=False, encoder_layers=3, **options).fit(texts, labels)
    clf = EncoderClassifier(tiny_bert, progress=False, encoder_layers=1, **options)
    clf.build_model(LabelSchema.from_labels(labels, multi_label=False))
    assert len(clf.model_.bert.encoder.layer) == 1
    original = AutoModel.from_pretrained(tiny_bert).encoder.layer[0].state_dict()
    kept = clf.model_.bert.encoder.layer[0].state_dict()
    assert all(torch.equal(original[k], kept[k]) for k in original)  # the first layer, as is
    clf.fit(texts, labels)
    folder = clf.save(tmp_path / "run")
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_hidden_layers == 1
    assert np.array_equal(
        EncoderClassifier.load(folder).predict_proba(texts), clf.predict_proba(texts)
    )
