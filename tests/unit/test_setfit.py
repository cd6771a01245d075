"""--method setfit on the tiny random BERT of conftest (a sentence-transformers body of
Transformer + mean pooling): SetFit's Trainer fits it, the run folder loads strictly, and
predict, evaluate, compare, serve and the ONNX export work on it as on any run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from llmclf import LlmclfError
from llmclf.cli import main
from llmclf.evaluation.calibration import to_proba
from llmclf.methods.onnx import OnnxClassifier
from llmclf.methods.setfit import SetFitClassifier, linear_logits_of, missing_message
from llmclf.runs import load_classifier
from llmclf.runs.export import export_onnx
from tests.conftest import make_texts

# the tiny random BERT learns the synthetic classes in a few steps at a high learning rate
FAST = dict(num_iterations=1, batch_size=16, learning_rate=2e-3, max_length=32, seed=0)


@pytest.fixture(scope="module")
def fitted(tiny_bert, tmp_path_factory):
    texts, labels = make_texts(30)
    clf = SetFitClassifier(tiny_bert, progress=False, **FAST).fit(texts, labels)
    return clf, clf.save(tmp_path_factory.mktemp("setfit") / "run")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("setfit-data")
    texts, labels = make_texts(60, seed=3)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "d.csv", index=False)
    return folder / "d.csv"


def test_fit_trains_the_body_contrastively_then_the_head(fitted, tiny_bert):
    from transformers import AutoModel

    clf, _ = fitted
    layer = "encoder.layer.0.attention.self.query.weight"
    original = AutoModel.from_pretrained(tiny_bert).state_dict()[layer]
    assert not torch.equal(original, clf.body_[0].auto_model.state_dict()[layer])
    # 1 iteration: each of the 30 texts in one same-class and one other-class pair
    assert clf.fit_choices_["setfit"]["pairs_per_epoch"] == 60
    assert clf.fit_choices_["setfit"]["steps"] == 4  # ceil(60 / 16)
    texts, labels = make_texts(30, seed=5)
    proba = clf.predict_proba(texts)
    assert proba.shape == (30, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert clf.predict(texts) == [clf.classes_[i] for i in proba.argmax(axis=1)]
    assert clf.score(texts, labels) > 0.8
    assert isinstance(clf.predict(texts[0]), str)
    assert clf.trainable_params_ == clf.total_params_ > 0


def test_logits_are_the_head_on_the_bodys_own_embeddings(fitted):
    """llmclf's batches (length-sorted, padded) give what sentence-transformers' encode
    gives, through the head's linear map."""
    clf, _ = fitted
    texts = ["bank stock market price", "goal", " ".join(["chip"] * 80)]  # the last is cut
    embeddings = clf.body_.encode(texts, convert_to_numpy=True)
    head = clf.model_.head
    expected = embeddings @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    np.testing.assert_allclose(clf.predict_logits(texts), expected, atol=1e-5)


def setfit_heads():
    """(name, fitted head, multi-label, classes, features) for each head SetFit fits."""
    import setfit
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    three, two = np.arange(40) % 3, np.arange(40) % 2
    multi = np.stack([two, 1 - two, np.ones(40, dtype=int)], axis=1)  # the last: every row
    torch.manual_seed(0)
    heads = [
        ("logistic", LogisticRegression().fit(x, three), False, 3),
        ("logistic, two classes", LogisticRegression().fit(x, two), False, 2),
        ("one-vs-rest", OneVsRestClassifier(LogisticRegression()).fit(x, multi), True, 3),
        ("differentiable", setfit.SetFitHead(6, 3, temperature=0.7, device="cpu"), False, 3),
        ("multitarget", setfit.SetFitHead(6, 3, device="cpu", multitarget=True), True, 3),
    ]
    return [(name, head, multi_label, n, x) for name, head, multi_label, n in heads]


def test_each_setfit_head_becomes_logits_whose_probabilities_are_its_own():
    for name, head, multi_label, classes, x in setfit_heads():
        weight, bias = linear_logits_of(head, multi_label, classes)
        ours = to_proba(x @ weight.T + bias, multi_label)
        if isinstance(head, torch.nn.Module):
            theirs = head.predict_proba(torch.from_numpy(x)).detach().numpy()
        else:
            theirs = head.predict_proba(x)
        np.testing.assert_allclose(ours, theirs, atol=1e-5, err_msg=name)


def test_save_load_gives_the_same_predictions_from_a_small_folder(fitted):
    clf, run = fitted
    texts, _ = make_texts(20, seed=2)
    loaded = SetFitClassifier.load(run, progress=False)
    assert np.array_equal(loaded.predict_proba(texts), clf.predict_proba(texts))
    names = {p.name for p in run.iterdir()}
    assert {"modules.json", "model.safetensors", "head.safetensors", "config.yaml"} <= names
    assert not list(run.rglob("*.pkl")) and "checkpoints" not in names  # no pickle, no states
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "setfit" and config["setfit"]["num_iterations"] == 1


def test_a_damaged_run_says_so_in_one_line(fitted, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, run = fitted
    cases = {
        "head": ("head.safetensors", "head.safetensors has weight of shape [2, 32]"),
        "body": ("model.safetensors", "model.safetensors lacks pooler.dense.bias"),
        "modules": ("modules.json", "modules.json is not valid JSON"),
    }
    for case, (name, message) in cases.items():
        broken = tmp_path / case
        shutil.copytree(run, broken)
        if case == "head":
            head = load_file(broken / name)
            save_file({"weight": head["weight"][:2], "bias": head["bias"][:2]}, broken / name)
        elif case == "body":
            weights = load_file(broken / name)
            del weights["pooler.dense.bias"]
            save_file(weights, broken / name)
        else:
            (broken / name).write_text("[{")
        with pytest.raises(LlmclfError) as refused:
            SetFitClassifier.load(broken)
        assert f"{broken} is damaged: {message}" in str(refused.value)
        assert "\n" not in str(refused.value)


def test_multi_label_uses_one_vs_rest_and_tunes_thresholds(tiny_bert):
    base, base_labels = make_texts(40, seed=4)
    texts = [f"{base[i]} {base[i + 1]}" if i % 4 == 0 else base[i] for i in range(0, 40, 2)]
    labels = [
        sorted({base_labels[i], base_labels[i + 1]}) if i % 4 == 0 else [base_labels[i]]
        for i in range(0, 40, 2)
    ]
    clf = SetFitClassifier(tiny_bert, progress=False, **FAST)
    clf.fit(texts, labels, eval_set=(texts[:10], labels[:10]))
    assert clf.schema_.multi_label and len(clf.schema_.thresholds) == 3
    proba = clf.predict_proba(texts[:6])
    assert proba.shape == (6, 3) and not np.allclose(proba.sum(axis=1), 1.0)
    thresholds = clf.schema_.thresholds
    expected = [[c for c, p, t in zip(clf.classes_, row, thresholds) if p >= t] for row in proba]
    assert clf.predict(texts[:6]) == expected


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lora-r", "4"], "--lora-r does not apply to --method setfit"),
        (["--model", "smollm2-135m"], "smollm2-135m is a causal LM: --method setfit needs"),
        (["--quantize", "4bit"], "--quantize does not apply to --method setfit"),
        (["--dtype", "bfloat16"], "--method setfit trains in float32 (bf16 mixed precision"),
        (["--num-iterations", "0"], "--num-iterations must be > 0"),
    ],
)
def test_options_that_do_not_apply_are_refused_in_one_line(tiny_bert, data, tmp_path, capsys, flags, message):  # fmt: skip
    args = ["train", "--method", "setfit", "--model", tiny_bert, "--data", str(data)]
    assert main([*args, "--output", str(tmp_path / "run"), "--max-length", "32", *flags]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("llmclf: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_cli_train_predict_evaluate_compare_and_serve(tiny_bert, data, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from llmclf.serve import create_app

    run = tmp_path / "run"
    args = ["train", "--method", "setfit", "--model", tiny_bert, "--data", str(data)]
    options = ["--num-iterations", "1", "--epochs", "1", "--batch-size", "16", "--seed", "0"]
    options += ["--learning-rate", "2e-3", "--max-length", "32"]
    options += ["--setfit-head", "differentiable", "--head-epochs", "3"]
    assert main([*args, "--output", str(run), *options, "--head-learning-rate", "0.05"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())["setfit"]
    assert config["setfit_head"] == "differentiable" and config["head_epochs"] == 3
    assert config["head_learning_rate"] == 0.05 and config["num_iterations"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "setfit" and metrics["n"] == 6
    assert metrics["setfit"]["pairs_per_epoch"] == 96  # 48 training rows, 1 iteration
    clf = load_classifier(run)

    texts, labels = make_texts(20, seed=9)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "in.csv", index=False)
    predict = ["predict", str(run), "--input", str(tmp_path / "in.csv")]
    assert main([*predict, "--output", str(tmp_path / "out.csv")]) == 0
    assert pd.read_csv(tmp_path / "out.csv")["prediction"].tolist() == clf.predict(texts)

    evaluate = ["evaluate", str(run), "--data", str(tmp_path / "in.csv")]
    assert main([*evaluate, "--output", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["accuracy"] == clf.score(texts, labels)

    tfidf = ["train", "--method", "tfidf", "--min-df", "1", "--data", str(data)]
    assert main([*tfidf, "--output", str(tmp_path / "tfidf")]) == 0
    compare = ["compare", str(run), str(tmp_path / "tfidf"), "--output", str(tmp_path / "cmp")]
    assert main(compare) == 0
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert len(report["runs"]) == 2

    with TestClient(create_app({"sf": run})) as client:
        response = client.post("/v1/classify", json={"model": "sf", "input": texts[:3]})
    assert response.status_code == 200, response.text
    probs = np.array([row["probs"] for row in response.json()["data"]])
    np.testing.assert_allclose(probs, clf.predict_proba(texts[:3]), atol=1e-5)


def test_onnx_export_reproduces_the_run(fitted, tmp_path):
    clf, run = fitted
    info = export_onnx(run, tmp_path / "onnx")
    assert info["parity"]["same_predictions"] and info["parity"]["max_abs_logit_diff"] < 1e-4
    exported = OnnxClassifier(tmp_path / "onnx", batch_size=5)
    texts, _ = make_texts(30, seed=7)
    texts.append(" ".join(["bank"] * 100))  # longer than max_length: cut the same way
    assert exported.predict(texts) == clf.predict(texts)
    np.testing.assert_allclose(exported.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["id2label"] == {"0": "money", "1": "sport", "2": "tech"}


@pytest.mark.parametrize("module", ["setfit", "sentence_transformers"])
def test_a_missing_setfit_extra_is_named_in_one_line(fitted, module, monkeypatch):
    _, run = fitted
    monkeypatch.setitem(sys.modules, module, None)  # what Python does for a missing module
    texts, labels = make_texts(9)
    with pytest.raises(LlmclfError) as refused:
        if module == "setfit":
            SetFitClassifier(progress=False, **FAST).fit(texts, labels)
        else:
            SetFitClassifier.load(run)
    assert str(refused.value) == missing_message(module)
    assert "pip install 'llmclf[setfit]'" in str(refused.value)
