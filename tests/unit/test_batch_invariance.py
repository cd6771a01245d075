"""One text, one answer: with ``--batch-invariant`` a run gives a text the same label and
the same probabilities whatever else is in its batch, the batch size, the input order,
and whichever path asks: the Python API and the server bit for bit, ``predict`` and
``evaluate`` within their files' decimals (1e-6). In bf16 the kernels' blocking depends
on a batch's shape, so without it the last bits of a row move with its neighbours (on the
tiny model here by ~6e-8, on SmolLM2 by up to 0.04: docs/evaluation.md)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from llmclf.cli import main
from llmclf.runs import load_classifier
from tests.conftest import make_texts

TOLERANCE = 1e-6  # what a CSV / JSON lines file keeps of a float32


@pytest.fixture(scope="module")
def bf16_run(tiny_llama, tmp_path_factory):
    """A tiny head run that predicts in bfloat16, and texts of many lengths."""
    folder = tmp_path_factory.mktemp("invariance")
    texts, labels = make_texts(60, seed=3)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / "train.csv", index=False)
    run = folder / "run"
    args = ["train", "--model", tiny_llama, "--data", str(folder / "train.csv")]
    args += ["--output", str(run), "--epochs", "1", "--max-length", "48", "--lora-r", "4"]
    assert main([*args, "--dtype", "bfloat16", "--batch-invariant"]) == 0
    probe, probe_labels = make_texts(24, seed=11)
    probe = [t + " and" * (i % 7) * 3 for i, t in enumerate(probe)]  # widths 2-60 tokens
    pd.DataFrame({"text": probe, "label": probe_labels}).to_csv(folder / "probe.csv", index=False)
    return run, probe, folder


def alone(run, texts: list[str]) -> np.ndarray:
    classifier = load_classifier(run, dtype="bfloat16", batch_invariant=True)
    return np.stack([classifier.predict_proba([t])[0] for t in texts])


def shuffled(run, texts: list[str], eval_batch_size: int, chunk: int, seed: int) -> np.ndarray:
    """Probabilities of ``texts`` asked for in a shuffled order, ``chunk`` texts a call."""
    classifier = load_classifier(
        run, dtype="bfloat16", batch_invariant=True, eval_batch_size=eval_batch_size
    )
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    out = np.zeros((len(texts), len(classifier.classes_)), dtype=np.float32)
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        out[rows] = classifier.predict_proba([texts[i] for i in rows])
    return out


def test_a_text_gets_one_answer_whatever_its_batch(bf16_run):
    run, texts, _ = bf16_run
    reference = alone(run, texts)
    assert load_classifier(run).config_.train.batch_invariant  # stored with the run
    for batch_size, chunk, seed in ((2, 5, 0), (7, 24, 1), (16, 9, 2), (3, 24, 3)):
        got = shuffled(run, texts, batch_size, chunk, seed)
        assert np.array_equal(got, reference), (batch_size, chunk, np.abs(got - reference).max())


def test_predict_evaluate_and_the_server_agree_with_the_api(bf16_run, tmp_path):
    from fastapi.testclient import TestClient

    from llmclf.serve import create_app

    run, texts, folder = bf16_run
    reference = alone(run, texts)
    classes = list(load_classifier(run).classes_)
    columns = [f"proba_{c}" for c in classes]

    reversed_file = tmp_path / "reversed.csv"
    pd.DataFrame({"text": texts[::-1]}).to_csv(reversed_file, index=False)
    out = tmp_path / "labelled.csv"
    argv = ["predict", str(run), "--input", str(reversed_file), "--output", str(out)]
    assert main([*argv, "--eval-batch-size", "7", "--dtype", "bfloat16"]) == 0
    predicted = pd.read_csv(out)[columns].to_numpy()[::-1]
    assert np.abs(predicted - reference).max() <= TOLERANCE

    argv = ["evaluate", str(run), "--data", str(folder / "probe.csv"), "--split", "all"]
    argv += ["--output", str(tmp_path / "eval"), "--eval-batch-size", "5", "--dtype", "bfloat16"]
    assert main(argv) == 0
    rows = pd.read_json(tmp_path / "eval" / "predictions.jsonl", lines=True)
    rows = rows.set_index("text").loc[texts]  # evaluate writes the rows in its own order
    assert np.abs(rows[columns].to_numpy() - reference).max() <= TOLERANCE

    app = create_app([run], dtype="bfloat16", max_batch_size=8, warm_up=False)
    with TestClient(app) as client:
        for start in (0, 5, 13):  # requests of several sizes, each its own batch
            part = texts[start : start + 6]
            reply = client.post("/v1/classify", json={"input": part}).json()
            served = np.array([row["probs"] for row in reply["data"]], dtype=np.float32)
            assert np.array_equal(served, reference[start : start + 6])
            assert [row["label"] for row in reply["data"]] == [
                classes[i] for i in reference[start : start + 6].argmax(1)
            ]


def test_each_text_runs_alone_at_a_width_from_its_own_length():
    """The mechanism: every forward call holds one text, padded to a multiple of 32
    tokens, whatever the batch size asked for and the server's buckets in force."""
    import torch

    from llmclf.batching import ShapeBuckets, bounded_shapes, run_batches

    shapes = []

    def forward(batch):
        shapes.append(tuple(batch["input_ids"].shape))
        return batch["attention_mask"].sum(1, keepdim=True).float()

    sequences = [[1] * n for n in (3, 40, 7, 33, 64, 1)]
    with bounded_shapes(ShapeBuckets(8, (1, 2, 4, 8))):
        lengths = run_batches(sequences, forward, 0, 8, torch.device("cpu"), False, invariant=True)
    assert lengths[:, 0].tolist() == [3, 40, 7, 33, 64, 1]
    assert sorted(shapes) == sorted([(1, 32), (1, 64), (1, 32), (1, 64), (1, 64), (1, 32)])
    shapes.clear()
    run_batches(sequences, forward, 0, 8, torch.device("cpu"), False)
    assert any(rows > 1 for rows, _ in shapes)  # the default batches texts together
