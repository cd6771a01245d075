"""End to end on the real SmolLM2-135M (offline package) and real BBC articles: a few dozen
examples, so it stays short on a 2-core CPU."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from llmclf.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2_run(bbc_small, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "smollm2"
    code = main(
        [
            "train",
            "--model",
            "smollm2-135m",
            "--data",
            str(bbc_small),
            "--output",
            str(run),
            "--max-length",
            "64",
            "--epochs",
            "2",
            "--learning-rate",
            "1e-3",
            "--head-learning-rate",
            "1e-2",
            "--lora-r",
            "8",
        ]
    )
    assert code == 0
    return run


def test_trains_and_beats_chance_on_real_articles(smollm2_run):
    metrics = json.loads((smollm2_run / "metrics.json").read_text())
    assert metrics["n"] == 16
    assert metrics["accuracy"] >= 0.75  # two topics: chance is 0.5
    assert 0 < metrics["trainable_params"] < 0.05 * metrics["total_params"]
    assert metrics["total_params"] > 130_000_000


def test_plain_transformers_and_peft_reproduce_the_logits(smollm2_run):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    from llmclf.runs import load_classifier

    adapter = json.loads((smollm2_run / "adapter_config.json").read_text())
    assert (
        pytest.importorskip("pathlib").Path(adapter["base_model_name_or_path"])
        / "model.safetensors"
    ).is_file()

    texts = [
        "Shares in the bank fell 5% after its profits missed forecasts.",
        "The striker scored twice as United won the cup final.",
    ]
    clf = load_classifier(smollm2_run, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_run)
    ids = tokenizer(texts)["input_ids"]
    assert (
        all(row[-1] == tokenizer.eos_token_id for row in ids)
        and tokenizer.pad_token_id != tokenizer.eos_token_id
    )
    model = AutoPeftModelForSequenceClassification.from_pretrained(smollm2_run, num_labels=2).eval()
    with torch.no_grad():
        plain = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    assert np.allclose(plain, clf.predict_logits(texts), atol=1e-4)


def test_second_load_uses_the_cache(smollm2_run):
    import time

    from llmclf.backbone import model_source

    start = time.perf_counter()
    model_source("smollm2-135m")
    assert time.perf_counter() - start < 5  # converted once; now only a lookup


def test_predict_cli_on_real_model(smollm2_run, tmp_path):
    source = tmp_path / "in.jsonl"
    pd.DataFrame(
        {"text": ["Oil prices pushed the stock market lower.", "Chelsea beat Arsenal 2-0."]}
    ).to_json(source, orient="records", lines=True)
    assert (
        main(
            [
                "predict",
                str(smollm2_run),
                "--input",
                str(source),
                "--output",
                str(tmp_path / "o.csv"),
            ]
        )
        == 0
    )
    out = pd.read_csv(tmp_path / "o.csv")
    assert list(out.columns) == ["text", "prediction", "proba_business", "proba_sports"]
