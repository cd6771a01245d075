"""Label scoring with the shared prompt cache must give what separate forward passes give."""

import itertools

import numpy as np
import pytest
import torch

from llmclf import InstructClassifier
from tests.conftest import make_texts
from tests.instruct_models import make_instruct_llama

CLASSES = ["money", "sport", "tech"]
# multi-token answers of different lengths
MAPPING = "money: bank\nsport: match goal team\ntech: chip code\n"


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "chatml"])
def untrained(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scoring")
    mapping = folder / "map.yaml"
    mapping.write_text(MAPPING)
    model = make_instruct_llama(folder / "model", chat=request.param)
    return model, str(mapping)


def brute_force_logprob(model, prompt: list[int], answer: list[int]) -> float:
    """log p(answer | prompt) from one unpadded forward over prompt + answer."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
    logprobs = logits.log_softmax(dim=-1)
    return sum(logprobs[len(prompt) - 1 + t, token].item() for t, token in enumerate(answer))


@pytest.mark.parametrize("normalization", ["sum", "mean"])
def test_scores_equal_separate_forward_passes(untrained, normalization):
    model, mapping = untrained
    clf = InstructClassifier(
        model,
        progress=False,
        verbalizer=mapping,
        max_length=64,
        eval_batch_size=4,  # 7 texts of different lengths: padded batches of 4 and 3
        score_normalization=normalization,
    ).zero_shot(CLASSES)
    texts, _ = make_texts(7, seed=3)
    assert len({len(ids) for ids in clf._encode(texts)}) > 2
    pieces = clf.format_.pieces
    assert sorted(len(pieces.complete((j,))) for j in range(3)) == [2, 3, 4]
    fast = clf.predict_logits(texts)
    brute = np.zeros_like(fast)
    for i, prompt in enumerate(clf._encode(texts)):
        for j in range(3):
            answer = pieces.complete((j,))
            score = brute_force_logprob(clf.model_, prompt, answer)
            brute[i, j] = score / len(answer) if normalization == "mean" else score
    assert np.allclose(fast, brute, atol=1e-4)
    assert (np.argsort(fast, axis=1) == np.argsort(brute, axis=1)).all()
    proba = clf.predict_proba(texts)
    assert np.allclose(proba, np.exp(brute) / np.exp(brute).sum(axis=1, keepdims=True), atol=1e-4)


def test_multi_label_probabilities_equal_exhaustive_enumeration(untrained):
    """With a beam as wide as the number of label sets of any size, the per-label
    probability is exactly the model's probability mass of the sets holding the label."""
    model, mapping = untrained
    clf = InstructClassifier(
        model, progress=False, verbalizer=mapping, max_length=64, eval_batch_size=3
    ).zero_shot(CLASSES, multi_label=True)
    texts, _ = make_texts(5, seed=4)
    pieces = clf.format_.pieces
    sets = [s for k in range(4) for s in itertools.combinations(range(3), k)]  # all 8, and {}
    expected = np.zeros((len(texts), 3))
    for i, prompt in enumerate(clf._encode(texts)):
        mass = {
            s: np.exp(brute_force_logprob(clf.model_, prompt, pieces.complete(s))) for s in sets
        }
        total = sum(mass.values())
        for j in range(3):
            expected[i, j] = sum(m for s, m in mass.items() if j in s) / total
    proba = clf.predict_proba(texts)
    assert np.allclose(proba, expected, atol=1e-4)


def test_a_narrow_beam_still_gives_probabilities(untrained):
    model, mapping = untrained
    clf = InstructClassifier(
        model, progress=False, verbalizer=mapping, max_length=64, multi_label_beam=1
    ).zero_shot(CLASSES, multi_label=True)
    proba = clf.predict_proba(make_texts(4, seed=5)[0])
    assert proba.shape == (4, 3) and ((proba >= 0) & (proba <= 1)).all()
