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


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def causal_lm(request):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=request.param,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("layout", ["packed", "split passes", "one answer per pass"])
def test_answer_logprobs_equal_separate_forward_passes(causal_lm, layout, monkeypatch):
    """Answers packed side by side after the cached prompt (however the passes are cut)
    score what each answer scores alone after its unpadded prompt."""
    from llmclf.methods.instruct import scoring as label_scoring

    if layout == "split passes":  # room for about 5 fed tokens per row: several passes
        monkeypatch.setattr(label_scoring, "_PACKED_LOGITS", 5 * 50 * 3)
    if layout == "one answer per pass":  # as for a short sliding window: transformers' masks
        monkeypatch.setattr(label_scoring, "takes_custom_masks", lambda model, keys: False)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 50, (n,), generator=generator).tolist() for n in (5, 9, 2)]
    # uneven numbers of answers per prompt; answers sharing first tokens (a shared branch
    # of the prefix tree), one-token answers, an answer repeated, the same answer in two rows
    by_row = [
        [[5, 6, 7, 8], [5, 6, 9], [5, 6], [10]],
        [[5, 6, 7]],
        [[11, 12, 13, 14], [11, 12, 13, 15], [16, 17], [11, 12, 13, 14]],
    ]
    answers = [a for row_answers in by_row for a in row_answers]
    rows = [row for row, row_answers in enumerate(by_row) for _ in row_answers]
    width = max(len(p) for p in prompts)
    batch = {
        "input_ids": torch.tensor([[0] * (width - len(p)) + p for p in prompts]),
        "attention_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
    }
    encoded = label_scoring.encode_prompts(causal_lm, batch)
    fast = label_scoring.answer_logprobs(causal_lm, encoded, answers, rows)
    assert encoded.cache.get_seq_length() == width  # cropped back to the prompt
    for n, (answer, row) in enumerate(zip(answers, rows)):
        expected = [
            brute_force_logprob(causal_lm, prompts[row] + answer[:t], [token])
            for t, token in enumerate(answer)
        ]
        assert fast[n, : len(answer)].tolist() == pytest.approx(expected, abs=1e-4)
        assert (fast[n, len(answer) :] == 0).all()


def test_packing_cuts_passes_to_the_logit_budget(causal_lm, monkeypatch):
    from llmclf.methods.instruct import scoring as label_scoring

    assert label_scoring.takes_custom_masks(causal_lm, 1000)
    monkeypatch.setattr(causal_lm.config, "sliding_window", 8, raising=False)
    assert not label_scoring.takes_custom_masks(causal_lm, 9)
    monkeypatch.setattr(causal_lm.config, "sliding_window", None)

    monkeypatch.setattr(label_scoring, "_PACKED_LOGITS", 6 * 50 * 2)  # 6 fed tokens per row
    mask = torch.ones((2, 3), dtype=torch.long)
    encoded = label_scoring.EncodedPrompts(None, None, mask.sum(dim=1), mask)
    answers = [[1, 2, 3], [1, 2, 4, 5, 6], [1, 2, 4, 7], [8, 9, 10, 11], [1, 2, 3, 4, 5, 6]]
    # row 0 feeds the prefixes 1, 12 | 124, 1245 | none new (124 is fed) | 8, 89, 8910:
    # 7 > 6, so its last answer waits for a second pass; row 1 feeds 5
    by_row = [[0, 1, 2, 3], [4]]
    passes = list(label_scoring._passes(causal_lm, encoded, by_row, answers))
    assert passes == [{0: [0, 1, 2], 1: [4]}, {0: [3]}]


def test_common_prefix_length_leaves_a_token_of_every_prompt():
    from llmclf.methods.instruct.scoring import common_prefix_length

    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical: the last one runs
    assert common_prefix_length([[7, 1], [8, 1]]) == 0
    assert common_prefix_length([[1], [1, 2]]) == 0


@pytest.mark.parametrize("multi_label", [False, True], ids=["single", "multi"])
def test_the_shared_prompt_prefix_runs_once_and_changes_no_score(untrained, multi_label):
    """Prompts sharing the template's first tokens: the prefix is run once per call and
    every score is what the whole prompt run per text gives."""
    from llmclf.batching import pad_batch
    from llmclf.methods.instruct import scoring as label_scoring

    model, mapping = untrained
    clf = InstructClassifier(model, progress=False, verbalizer=mapping, max_length=64)
    clf = clf.zero_shot(CLASSES, multi_label=multi_label)
    texts, _ = make_texts(6, seed=7)
    prompts = clf._encode(texts)
    prefix = label_scoring.shared_prefix(clf.model_, prompts, torch.device("cpu"), keys=64)
    # everything before the text is shared (the first text token may merge with it)
    before = len(clf.format_.ids(clf.format_.before))
    assert before - 2 <= prefix.length <= before
    assert prefix.length == label_scoring.common_prefix_length(prompts)
    assert prefix.cache.get_seq_length() == prefix.length

    pad = clf.tokenizer_.pad_token_id
    whole = pad_batch(prompts, pad, side="left")
    rest = pad_batch([p[prefix.length :] for p in prompts], pad, side="left")
    with torch.no_grad():
        alone = clf._label_logits(clf.model_, whole)
        shared = clf._label_logits(clf.model_, rest, prefix)
        again = clf._label_logits(clf.model_, rest, prefix)  # the prefix cache is not consumed
    assert torch.allclose(alone, shared, atol=1e-4)
    assert torch.equal(shared, again)
    assert prefix.cache.get_seq_length() == prefix.length


def test_no_shared_prefix_where_the_mask_cannot_carry_it(causal_lm, monkeypatch):
    from llmclf.methods.instruct.scoring import shared_prefix

    cpu = torch.device("cpu")
    prompts = [[1, 2, 3, 4], [1, 2, 5]]
    assert shared_prefix(causal_lm, prompts, cpu, keys=10).length == 2
    assert shared_prefix(causal_lm, prompts[:1], cpu, keys=10) is None  # one prompt
    assert shared_prefix(causal_lm, [[1, 2], [3, 4]], cpu, keys=10) is None  # nothing shared
    monkeypatch.setattr(causal_lm.config, "sliding_window", 8, raising=False)
    assert shared_prefix(causal_lm, prompts, cpu, keys=10) is None
