"""The CUDA path with the tiny random models: head and instruct training and prediction on
the GPU, bf16 autocast over bf16 base weights, and the 4-bit NF4 base (bitsandbytes).

Marked ``gpu`` (``pytest -m gpu`` runs only these); on a machine without CUDA they skip,
saying so. benchmarks/gpu_check.sh runs them, and the rest of the unit suite, on a lent GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmclf import HeadClassifier, InstructClassifier
from tests.conftest import decoder_forwards, make_texts
from tests.instruct_models import make_instruct_llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU; run benchmarks/gpu_check.sh on one",
    ),
]

HEAD = dict(epochs=3, batch_size=8, max_length=32, learning_rate=5e-3, head_learning_rate=1e-2)
INSTRUCT = dict(
    epochs=4, batch_size=8, max_length=64, learning_rate=1e-2, early_stopping_patience=0
)


def parameter_devices(model) -> set[str]:
    return {p.device.type for p in model.parameters()}


def test_head_trains_and_predicts_on_cuda(tiny_llama, tmp_path):
    texts, labels = make_texts(60)
    clf = HeadClassifier(tiny_llama, device="cuda", progress=False, **HEAD).fit(texts, labels)
    assert parameter_devices(clf.model_) == {"cuda"}
    lora_b = [p for n, p in clf.model_.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it trained

    held_out, truth = make_texts(30, seed=1)
    proba = clf.predict_proba(held_out)
    assert proba.shape == (30, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert clf.predict(held_out) == [clf.classes_[i] for i in proba.argmax(axis=1)]
    assert clf.score(held_out, truth) > 0.75  # separable classes: chance is 1/3

    loaded = HeadClassifier.load(clf.save(tmp_path / "run"), progress=False, device="cuda")
    assert parameter_devices(loaded.model_) == {"cuda"}
    # CUDA's auto dtype is bf16 and a loaded run has its adapter merged into the bf16
    # weights: the same answers, probabilities equal to bf16 rounding
    np.testing.assert_allclose(loaded.predict_proba(held_out), proba, atol=0.03)
    agree = np.mean(np.array(loaded.predict(held_out)) == np.array(clf.predict(held_out)))
    assert agree >= 0.9


def test_bf16_training_runs_under_cuda_autocast(tiny_llama):
    """--dtype bfloat16 on CUDA: the Trainer's forward passes run under CUDA bf16 autocast,
    over bf16 base weights, with the LoRA weights and the head in fp32."""
    texts, labels = make_texts(48, seed=2)
    with decoder_forwards("cuda") as seen:
        clf = HeadClassifier(
            tiny_llama, device="cuda", dtype="bfloat16", epochs=1, batch_size=8, progress=False
        ).fit(texts, labels)
    assert seen and all(enabled for enabled, _ in seen)
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
    params = dict(clf.model_.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in params.items() if "proj.base_layer" in n} == {torch.bfloat16}
    losses = [row["loss"] for row in clf.train_result_.log_history if "loss" in row]
    assert losses and all(np.isfinite(losses))


def test_nf4_base_trains_and_reloads_on_cuda(tiny_llama, tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="--quantize 4bit needs bitsandbytes")
    texts, labels = make_texts(60)
    clf = HeadClassifier(tiny_llama, device="cuda", quantize="4bit", progress=False, **HEAD).fit(
        texts, labels
    )
    quantized = [m for m in clf.model_.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and {m.weight.quant_type for m in quantized} == {"nf4"}
    assert {m.weight.device.type for m in quantized} == {"cuda"}
    head = [p for n, p in clf.model_.named_parameters() if "score.modules_to_save" in n]
    assert head and all(p.dtype == torch.float32 and p.requires_grad for p in head)

    held_out, truth = make_texts(30, seed=1)
    assert clf.score(held_out, truth) > 0.75
    loaded = HeadClassifier.load(clf.save(tmp_path / "run"), progress=False, device="cuda")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model_.modules())
    # over a 4-bit base the adapter stays separate; the fitted model's norms are fp32
    # (PEFT's prepare_model_for_kbit_training), the loaded one's bf16: bf16 rounding apart
    proba = clf.predict_proba(held_out)
    np.testing.assert_allclose(loaded.predict_proba(held_out), proba, atol=0.03)
    assert np.mean(np.array(loaded.predict(held_out)) == np.array(clf.predict(held_out))) >= 0.9


def test_instruct_trains_scores_and_generates_on_cuda(tmp_path):
    model = make_instruct_llama(tmp_path / "instruct-llama")
    texts, labels = make_texts(90)
    clf = InstructClassifier(model, device="cuda", progress=False, **INSTRUCT).fit(texts, labels)
    assert parameter_devices(clf.model_) == {"cuda"}
    held_out, truth = make_texts(30, seed=1)
    proba = clf.predict_proba(held_out)
    assert proba.shape == (30, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert clf.score(held_out, truth) > 0.6

    generating = InstructClassifier.load(
        clf.save(tmp_path / "run"), progress=False, device="cuda", predict_mode="generate"
    )
    answers = generating.generate_answers(held_out)
    assert len(answers) == 30 and all(isinstance(a, str) for a in answers)
    assert generating.score(held_out, truth) > 0.5


def test_train_command_reports_peak_gpu_memory(tiny_llama, tmp_path):
    import pandas as pd

    from llmclf.cli import main

    texts, labels = make_texts(60, seed=3)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "d.csv", index=False)
    args = ["train", "--model", tiny_llama, "--data", str(tmp_path / "d.csv"), "--epochs", "1"]
    assert main([*args, "--device", "cuda", "--output", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["peak_gpu_mb"] > 0
    assert metrics["dtype"] == "bfloat16"  # auto on a CUDA GPU that supports it
