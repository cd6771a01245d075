"""The instruct approach end to end on the real SmolLM2-135M-Instruct and real BBC
articles: a few dozen short examples, so it stays short on a 2-core CPU."""

import json

import numpy as np
import pytest
import torch

from llmclf.cli import main

from .bbc_data import write_bbc_small

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bbc_small(tmp_path_factory):
    """32 train / 8 validation / 16 test BBC articles (title + opening), two topics."""
    return write_bbc_small(tmp_path_factory.mktemp("bbc"), (16, 4, 8), max_chars=400)


@pytest.fixture(scope="module")
def instruct_run(bbc_small, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "instruct"
    code = main(
        [
            "train",
            "--method",
            "instruct",
            "--model",
            "smollm2-135m",
            "--data",
            str(bbc_small),
            "--output",
            str(run),
            "--max-length",
            "128",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--lora-r",
            "8",
            "--learning-rate",
            "1e-3",
        ]
    )
    assert code == 0
    return run


def test_trains_and_answers_real_articles(instruct_run, tmp_path):
    metrics = json.loads((instruct_run / "metrics.json").read_text())
    assert metrics["n"] == 16 and metrics["accuracy"] >= 0.75  # two topics: chance is 0.5
    assert 0 < metrics["trainable_params"] < 0.05 * metrics["total_params"]
    out = tmp_path / "gen"
    args = ["evaluate", str(instruct_run), "--predict-mode", "generate", "--output", str(out)]
    assert main(args) == 0
    generated = json.loads((out / "metrics.json").read_text())
    assert generated["unparsed"] <= 2 and generated["accuracy"] >= 0.75


def test_plain_peft_reproduces_the_label_scores(instruct_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from llmclf.runs import load_classifier

    clf = load_classifier(instruct_run, progress=False)
    text = "Shares in the bank fell 5% after its profits missed forecasts."
    tokenizer = AutoTokenizer.from_pretrained(instruct_run)
    prompt = tokenizer.apply_chat_template(
        clf.format_.messages(text), add_generation_prompt=True, tokenize=False
    )
    assert prompt == clf.format_prompt(text) and "<|im_start|>assistant" in prompt
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    model = AutoPeftModelForCausalLM.from_pretrained(instruct_run).eval()
    scores = []
    for label in clf.classes_:
        answer = tokenizer(label + "<|im_end|>", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = model(input_ids=torch.tensor([ids + answer])).logits[0].log_softmax(-1)
        scores.append(sum(logprobs[len(ids) - 1 + t, a].item() for t, a in enumerate(answer)))
    assert np.allclose(scores, clf.predict_logits([text])[0], atol=1e-3)
    assert clf.classes_[int(np.argmax(scores))] == "business"


def test_zero_shot_baseline(bbc_small, tmp_path):
    out = tmp_path / "zs"
    args = ["evaluate", "--zero-shot", "--model", "smollm2-135m", "--data", str(bbc_small)]
    assert main([*args, "--max-length", "128", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["zero_shot"] and metrics["trainable_params"] == 0 and metrics["n"] == 16
    assert metrics["accuracy"] >= 0.5  # the untrained model, two topics by name
