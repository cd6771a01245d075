"""End to end on the real all-MiniLM-L6-v2 (offline package) and real BBC articles: a few
dozen examples, so it stays short on a 2-core CPU."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from llmclf.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm_run(bbc_small, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "minilm"
    args = ["train", "--method", "encoder", "--data", str(bbc_small), "--output", str(run)]
    assert main([*args, "--max-length", "64", "--epochs", "3", "--batch-size", "8"]) == 0
    return run


def test_default_encoder_is_minilm_and_learns_real_articles(minilm_run):
    metrics = json.loads((minilm_run / "metrics.json").read_text())
    assert metrics["n"] == 16 and metrics["accuracy"] >= 0.75  # two topics: chance is 0.5
    assert 22_000_000 < metrics["total_params"] < 23_500_000
    assert metrics["trainable_params"] == metrics["total_params"]  # full fine-tuning


def test_plain_transformers_reproduce_the_logits(minilm_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmclf.runs import load_classifier

    texts = [
        "Shares in the bank fell 5% after its profits missed forecasts.",
        "The striker scored twice as United won the cup final.",
    ]
    clf = load_classifier(minilm_run, progress=False)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_run).eval()
    batch = AutoTokenizer.from_pretrained(minilm_run)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = model(**batch).logits.numpy()
    assert np.allclose(plain, clf.predict_logits(texts), atol=1e-4)
    assert clf.predict(texts) == ["business", "sports"]


def test_onnx_export_matches_pytorch_on_the_real_model(minilm_run, tmp_path):
    from llmclf.runs import load_classifier
    from llmclf.runs.export import OnnxClassifier, export_onnx

    info = export_onnx(minilm_run, tmp_path / "onnx")
    assert info["parity"]["same_predictions"]
    texts = list(pd.read_json(minilm_run / "test_predictions.jsonl", lines=True)["text"])
    exported = OnnxClassifier(tmp_path / "onnx")
    clf = load_classifier(minilm_run, progress=False)
    assert exported.predict(texts) == clf.predict(texts)
    assert np.allclose(exported.predict_proba(texts), clf.predict_proba(texts), atol=1e-4)


def test_mpnet_base_is_joined_and_unzipped_once():
    from transformers import AutoConfig, AutoTokenizer

    from llmclf.backbone import model_source

    folder = model_source("mpnet-base")
    assert AutoConfig.from_pretrained(folder).model_type == "mpnet"
    assert AutoTokenizer.from_pretrained(folder)("a test")["input_ids"][0] == 0  # <s>
    assert model_source("mpnet-base") == folder
