import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from llmclf import LlmclfError
from llmclf.cli import main
from llmclf.methods.distill import (
    DistillConfig,
    distillation_loss,
    pack_targets,
    unpack_targets,
)
from llmclf.runs.distill import cached_teacher_logits
from tests.conftest import make_texts


def test_loss_matches_a_value_worked_out_by_hand():
    # T = 1: p_teacher = softmax([0, 1]) = [0.2689, 0.7311], log p_student = [-0.3133, -1.3133]
    # KL = 0.2689 * (-1.3133 + 0.3133) + 0.7311 * (-0.3133 + 1.3133) = 0.4621
    # CE(student, class 0) = 0.3133; loss = 0.25 * 0.4621 + 0.75 * 0.3133 = 0.3505
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    gold, has = torch.tensor([[1.0, 0.0]]), torch.tensor([1.0])
    assert float(distillation_loss(s, t, gold, has, 1.0, 1.0, 0.0, False)) == pytest.approx(
        0.4621, abs=1e-4
    )
    assert float(distillation_loss(s, t, gold, has, 1.0, 0.25, 0.75, False)) == pytest.approx(
        0.3505, abs=1e-4
    )


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_single_label_loss_is_t_squared_kl_plus_ce_on_labelled_rows():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    gold = np.eye(3)[[0, 2, 1, 0]]
    has = np.array([1.0, 1.0, 0.0, 1.0])  # the third row is unlabelled
    temperature, kd_w, ce_w = 2.0, 0.3, 0.7
    p_t, p_s = softmax(t / temperature), softmax(s / temperature)
    kl = np.mean(np.sum(p_t * np.log(p_t / p_s), axis=1))
    ce_rows = -np.log(np.sum(softmax(s) * gold, axis=1))
    expected = kd_w * temperature**2 * kl + ce_w * np.sum(ce_rows * has) / has.sum()
    got = distillation_loss(
        *(torch.tensor(a, dtype=torch.float64) for a in (s, t, gold, has)),
        temperature,
        kd_w,
        ce_w,
        multi_label=False,
    )
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_multi_label_loss_is_binary_kl_per_label_plus_bce():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    gold = (rng.random((3, 4)) > 0.5).astype(float)
    has = np.array([1.0, 0.0, 1.0])
    temperature = 3.0
    p, q = 1 / (1 + np.exp(-t / temperature)), 1 / (1 + np.exp(-s / temperature))
    kl = np.mean(np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), axis=1))
    sig = 1 / (1 + np.exp(-s))
    bce_rows = -np.mean(gold * np.log(sig) + (1 - gold) * np.log(1 - sig), axis=1)
    expected = 0.5 * temperature**2 * kl + 0.5 * np.sum(bce_rows * has) / has.sum()
    got = distillation_loss(
        *(torch.tensor(a, dtype=torch.float64) for a in (s, t, gold, has)),
        temperature,
        0.5,
        0.5,
        multi_label=True,
    )
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_student_equal_to_teacher_has_no_kl_and_unlabelled_batch_has_no_ce():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    none = torch.tensor([0.0])
    gold = torch.zeros(1, 3)
    assert float(distillation_loss(logits, logits, gold, none, 4.0, 1.0, 1.0, False)) == 0.0
    assert float(distillation_loss(logits, logits, gold, none, 4.0, 1.0, 1.0, True)) < 1e-7


def test_packed_targets_round_trip():
    gold = np.eye(3, dtype=np.float32)[[2, 0]]
    teacher = np.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]], dtype=np.float32)
    packed = pack_targets(gold, np.array([1.0, 0.0]), teacher)
    assert packed.shape == (2, 7)
    g, h, t = unpack_targets(packed, 3)
    assert np.array_equal(g, gold) and list(h) == [1.0, 0.0] and np.array_equal(t, teacher)


class CountingTeacher:
    def __init__(self):
        self.calls = 0

    def predict_logits(self, texts):
        self.calls += 1
        return np.arange(len(texts) * 2, dtype=np.float32).reshape(-1, 2)


def test_teacher_logits_are_computed_once_per_text_set(tmp_path):
    teacher = CountingTeacher()
    first = cached_teacher_logits(teacher, ["a", "b"], tmp_path, "train")
    again = cached_teacher_logits(teacher, ["a", "b"], tmp_path, "train")
    assert teacher.calls == 1 and np.array_equal(first, again)
    cached_teacher_logits(teacher, ["a", "c"], tmp_path, "train")  # other texts: recomputed
    assert teacher.calls == 2


def test_config_is_checked():
    with pytest.raises(LlmclfError, match="--temperature must be > 0"):
        DistillConfig(temperature=0)
    with pytest.raises(LlmclfError, match="cannot both be 0"):
        DistillConfig(kd_weight=0, ce_weight=0)


# ---------------------------------------------------------------------------------------
# End to end: a tiny head teacher distilled into a tiny BERT student
# ---------------------------------------------------------------------------------------

STUDENT = ["--epochs", "2", "--batch-size", "8", "--learning-rate", "5e-3"]
STUDENT += ["--head-learning-rate", "5e-2", "--warmup-ratio", "0", "--eval-batch-size", "8"]


@pytest.fixture(scope="module")
def teacher_and_data(tiny_llama, tmp_path_factory):
    from llmclf import HeadClassifier

    folder = tmp_path_factory.mktemp("distill")
    texts, labels = make_texts(60)
    data = folder / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    teacher = HeadClassifier(
        tiny_llama, progress=False, epochs=2, max_length=32, learning_rate=5e-3
    ).fit(texts, labels)
    teacher.save(folder / "teacher")
    unlabeled = folder / "extra.txt"
    unlabeled.write_text("\n".join(make_texts(12, seed=9)[0]) + "\n\n")
    return folder / "teacher", data, unlabeled


def distill(teacher, data, tiny_bert, output, *extra):
    return main(
        ["distill", str(teacher), "--student", tiny_bert, "--data", str(data)]
        + ["--output", str(output), *STUDENT, *extra]
    )


def test_distill_writes_an_ordinary_encoder_run_with_the_comparison(
    teacher_and_data, tiny_bert, tmp_path, capsys
):
    teacher, data, unlabeled = teacher_and_data
    run = tmp_path / "student"
    assert distill(teacher, data, tiny_bert, run, "--unlabeled", str(unlabeled)) == 0
    assert "of the F1 at" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("teacher_examples_per_s", "student_examples_per_s", "teacher_macro_f1"):
        assert metrics[key] > 0
    assert metrics["student_macro_f1"] == metrics["macro_f1"]
    assert metrics["f1_ratio"] == pytest.approx(
        metrics["student_macro_f1"] / metrics["teacher_macro_f1"], abs=1e-4
    )
    assert metrics["throughput_ratio"] == pytest.approx(  # rounded to 2 decimals
        metrics["student_examples_per_s"] / metrics["teacher_examples_per_s"], abs=0.0051
    )
    # 48 labelled training rows (80 % of 60) plus the 12 non-empty unlabelled lines
    assert metrics["labelled_examples"] == 48 and metrics["unlabeled_examples"] == 12
    assert metrics["train_examples"] == 60
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "encoder" and config["distill"]["temperature"] == 2.0
    assert config["model"]["max_length"] == 32  # the teacher's input budget
    assert np.load(run / "teacher_logits" / "train.npz")["logits"].shape == (60, 3)
    assert main(["evaluate", str(run)]) == 0


def test_resume_reuses_the_cached_teacher_logits(teacher_and_data, tiny_bert, tmp_path, capsys):
    teacher, data, _ = teacher_and_data
    run = tmp_path / "student"
    assert distill(teacher, data, tiny_bert, run, "--epochs", "1") == 0
    cache = run / "teacher_logits"
    # a run killed after the teacher pass: only the cache is left
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    cache.rename(unfinished / "teacher_logits")
    stamps = {p.name: os.stat(p).st_mtime_ns for p in (unfinished / "teacher_logits").iterdir()}
    assert distill(teacher, data, tiny_bert, unfinished) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert distill(teacher, data, tiny_bert, unfinished, "--resume") == 0
    after = {p.name: os.stat(p).st_mtime_ns for p in (unfinished / "teacher_logits").iterdir()}
    assert after == stamps
    assert (unfinished / "metrics.json").is_file()


def test_distill_refuses_what_does_not_apply(teacher_and_data, tmp_path, capsys):
    teacher, data, _ = teacher_and_data
    config = tmp_path / "d.yaml"
    config.write_text(yaml.safe_dump({"lora_r": 4, "temperature": 3.0}))
    out = tmp_path / "x"
    base = ["distill", str(teacher), "--data", str(data), "--output", str(out)]
    assert main([*base, "--config", str(config)]) == 2
    assert "--lora-r does not apply to llmclf distill" in capsys.readouterr().err
    assert main(["distill", str(tmp_path / "nope"), "--data", str(data), "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["distill", str(teacher), "--output", str(out)]) == 2  # saved by the Python API
    assert "does not say what data it was trained on: give --data" in capsys.readouterr().err
    assert not out.exists()
