"""--long-text: windows and head-tail cuts on the tokenizer's own ids, the aggregation's
algebra, and chunked head / encoder runs (training, save / load, short texts, export)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmclf import EncoderClassifier, HeadClassifier, InstructClassifier, LlmclfError
from llmclf.backbone import load_tokenizer
from llmclf.batching import ShapeBuckets, bounded_shapes
from llmclf.cli import main
from llmclf.long_text import (
    LongTextConfig,
    aggregate,
    check_long_text,
    chunk_attention,
    chunk_windows,
    group_windows,
    head_tail_ids,
    head_tail_split,
    run_window_batches,
    tokens_read,
)
from tests.conftest import FILLER, WORDS, make_texts

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOCAB = sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
FAST = dict(epochs=2, batch_size=8, max_length=12, learning_rate=5e-3, eval_batch_size=8)


@pytest.fixture(scope="module")
def eos_tokenizer(tiny_llama):
    """The tiny Llama's tokenizer as the head method loads it: EOS appended (1 special)."""
    return load_tokenizer(tiny_llama, "right", append_eos=True)


@pytest.fixture(scope="module")
def bert_tokenizer(tiny_bert):
    """[CLS] ... [SEP]: 2 special tokens, one on each side."""
    return load_tokenizer(tiny_bert, "right")


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def long_texts(n: int, seed: int = 0, repeat: int = 4) -> tuple[list[str], list[str]]:
    """make_texts, each text repeated so that most need several windows of FAST's 12."""
    texts, labels = make_texts(n, seed=seed)
    return [" ".join([t] * repeat) for t in texts], labels


def strip(tokenizer, ids: list[int]) -> list[int]:
    specials = set(tokenizer.all_special_ids)
    return [i for i in ids if i not in specials]


# ---------------------------------------------------------------------------------------
# Windows and head-tail on token ids
# ---------------------------------------------------------------------------------------


@SETTINGS
@given(
    n=st.integers(1, 60),
    max_length=st.integers(3, 16),
    stride_share=st.floats(0, 0.99),
    max_chunks=st.integers(1, 8),
    seed=st.integers(0, 1000),
    which=st.sampled_from(["eos", "bert"]),
    last_window=st.sampled_from(["full", "rest"]),
)
def test_windows_cover_every_token_as_configured(
    eos_tokenizer, bert_tokenizer, n, max_length, stride_share, max_chunks, seed, which, last_window
):
    tokenizer = eos_tokenizer if which == "eos" else bert_tokenizer
    text = words(n, seed)
    room = max_length - tokenizer.num_special_tokens_to_add()
    stride = int(stride_share * room)  # 0 <= stride < room
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = chunk_windows(tokenizer, [text], max_length, stride, max_chunks, last_window)[0]
    step = room - stride
    needed = 1 if n <= room else 1 + math.ceil((n - room) / step)
    assert len(windows) == min(needed, max_chunks)
    full = tokenizer(text)["input_ids"]
    lead = full.index(content[0])
    trail = len(full) - lead - len(content)
    read_whole = 1 < needed <= max_chunks
    starts = [k * step for k in range(len(windows))]
    if read_whole and last_window == "full":  # the text's last `room` tokens, a full window
        starts[-1] = n - room
    for start, window in zip(starts, windows):
        assert len(window) <= max_length
        # each window is framed by the special tokens exactly as a whole text is
        assert window[:lead] == full[:lead]
        assert window[len(window) - trail :] == full[len(full) - trail :]
        assert strip(tokenizer, window) == content[start : start + room]
    if read_whole:  # the last window ends where the text ends; together they cover it
        assert strip(tokenizer, windows[-1])[-1] == content[-1]
        assert last_window == "rest" or all(len(w) == max_length for w in windows)
        covered = set()
        for start, window in zip(starts, windows):
            covered |= set(range(start, start + len(strip(tokenizer, window))))
        assert covered == set(range(n))
    if n <= room:
        assert windows == [tokenizer(text)["input_ids"]]


@SETTINGS
@given(
    n=st.integers(1, 60),
    max_length=st.integers(3, 16),
    ratio=st.floats(0, 1),
    seed=st.integers(0, 1000),
    which=st.sampled_from(["eos", "bert"]),
)
def test_head_tail_keeps_exactly_the_first_and_last_tokens(
    eos_tokenizer, bert_tokenizer, n, max_length, ratio, seed, which
):
    tokenizer = eos_tokenizer if which == "eos" else bert_tokenizer
    text = words(n, seed)
    full = tokenizer(text)["input_ids"]
    ids = head_tail_ids(tokenizer, [text], max_length, ratio)[0]
    if len(full) <= max_length:
        assert ids == full
        return
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    head, tail = head_tail_split(max_length - tokenizer.num_special_tokens_to_add(), ratio)
    assert len(ids) == max_length
    assert strip(tokenizer, ids) == content[:head] + content[len(content) - tail :]
    # the special tokens sit where they sit in a whole encoding
    lead = full.index(content[0])
    trail = len(full) - lead - len(content)
    assert ids[:lead] == full[:lead] and ids[len(ids) - trail :] == full[len(full) - trail :]


def test_the_instruct_prompt_keeps_instructions_and_label_list():
    from tests.unit.test_prompts import plain_format

    fmt = plain_format()
    text = " ".join(f"{w}" for w in ["match"] * 3 + ["bank"] * 40 + ["chip"] * 5)
    budget = fmt.overhead() + 20
    ids = fmt.prompt_ids(text, budget, head_ratio=0.25)
    before, after = fmt.ids(fmt.before), fmt.ids(fmt.after)
    assert len(ids) == budget
    assert ids[: len(before)] == before and ids[-len(after) :] == after
    labels = fmt.ids("bank, match goal, chip")  # the label list
    assert any(before[i : i + len(labels)] == labels for i in range(len(before)))
    kept = fmt.tokenizer.decode(ids[len(before) : -len(after)]).split()
    assert kept == ["match"] * 3 + ["bank"] * 2 + ["bank"] * 10 + ["chip"] * 5
    # ratio 1 is plain truncation: the end of the text goes
    plain = fmt.prompt_ids(text, budget)
    assert fmt.tokenizer.decode(plain[len(before) : -len(after)]).split()[-1] == "bank"


# ---------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["mean", "max", "attention"])
def test_aggregating_one_window_is_the_identity(how):
    torch.manual_seed(0)
    features = torch.randn(5, 1, 16)
    mask = torch.ones(5, 1, dtype=torch.bool)
    out = aggregate(features, mask, how, chunk_attention(16))
    assert torch.equal(out, features[:, 0])


@SETTINGS
@given(
    counts=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    junk=st.sampled_from([float("nan"), float("inf"), -1e9, 123.0]),
    how=st.sampled_from(["mean", "max", "attention"]),
)
def test_padding_never_leaks_into_the_aggregate(counts, junk, how):
    torch.manual_seed(len(counts))
    attention = chunk_attention(8)
    pooled = torch.randn(sum(counts), 8)
    features, mask = group_windows(pooled, torch.tensor(counts))
    features = features.masked_fill(~mask.unsqueeze(-1), junk)
    out = aggregate(features, mask, how, attention)
    start = 0
    for row, count in enumerate(counts):  # each text alone, with no padding at all
        alone = pooled[start : start + count][None]
        expected = aggregate(alone, torch.ones(1, count, dtype=torch.bool), how, attention)
        torch.testing.assert_close(out[row], expected[0])
        start += count


def test_attention_weights_follow_the_scores():
    attention = chunk_attention(2)
    with torch.no_grad():
        attention.weight.copy_(torch.tensor([[10.0, 0.0]]))
        attention.bias.zero_()
    features = torch.tensor([[[1.0, 7.0], [0.0, 3.0]]])
    out = aggregate(features, torch.ones(1, 2, dtype=torch.bool), "attention", attention)
    # scores 10 and 0: the first window carries ~all the weight
    torch.testing.assert_close(out, torch.tensor([[1.0, 7.0]]), atol=1e-3, rtol=0)


def test_a_fresh_scorer_weighs_every_window_alike():
    """Attention starts as the mean of the real windows, so a short run cannot end worse
    off than it began because of a random first weighting."""
    torch.manual_seed(0)
    features, mask = group_windows(torch.randn(6, 8) * 50, torch.tensor([3, 1, 2]))
    torch.testing.assert_close(
        aggregate(features, mask, "attention", chunk_attention(8)),
        aggregate(features, mask, "mean"),
    )


def test_a_text_one_token_past_a_window_is_read_as_two_full_windows(eos_tokenizer):
    room = 12 - eos_tokenizer.num_special_tokens_to_add()
    text = words(room + 1, 3)
    content = eos_tokenizer(text, add_special_tokens=False)["input_ids"]
    first, last = chunk_windows(eos_tokenizer, [text], 12, 0, 4)[0]
    # not the one token left over: a window of it would weigh as much as the first
    assert strip(eos_tokenizer, first) == content[:room]
    assert strip(eos_tokenizer, last) == content[1:]
    assert last[-1] == eos_tokenizer.eos_token_id


def test_tokens_read_counts_what_the_windows_cover(eos_tokenizer):
    config = LongTextConfig(long_text="chunks", chunk_stride=2, max_chunks=3)
    limit = tokens_read(config, 8, eos_tokenizer.num_special_tokens_to_add())
    fits = words(limit - 1, 0)  # + EOS = limit tokens
    assert len(eos_tokenizer(fits)["input_ids"]) == limit
    windows = chunk_windows(eos_tokenizer, [fits, words(limit, 0)], 8, 2, 3)
    assert strip(eos_tokenizer, windows[0][-1])[-1] == eos_tokenizer(fits)["input_ids"][-2]
    assert tokens_read(LongTextConfig(), 8, 1) == 8


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------


def test_bad_values_are_refused_before_any_model_loads():
    with pytest.raises(LlmclfError, match="--chunk-stride 12 must be smaller than --max-length"):
        HeadClassifier(
            "no/such-model", long_text="chunks", chunk_stride=12, max_length=12
        ).resolve_config()
    with pytest.raises(LlmclfError, match="--max-chunks must be > 0"):
        HeadClassifier("no/such-model", long_text="chunks", max_chunks=0).resolve_config()
    with pytest.raises(LlmclfError, match="--head-tail-ratio must be between 0 and 1"):
        HeadClassifier("no/such-model", head_tail_ratio=1.5).resolve_config()
    with pytest.raises(LlmclfError, match="applies to --method head and encoder, not instruct"):
        InstructClassifier("no/such-model", long_text="chunks").resolve_config()
    # a stride only counts with chunks
    check_long_text(LongTextConfig(chunk_stride=500), 128)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--long-text", "chunks", "--chunk-stride", "32", "--max-length", "32"], "smaller than"),
        (["--long-text", "chunks", "--max-chunks", "0"], "--max-chunks must be > 0"),
        (["--method", "instruct", "--long-text", "chunks"], "not instruct"),
        (["--method", "tfidf", "--long-text", "chunks"], "does not apply to --method tfidf"),
        (["--long-text", "middle"], "invalid choice"),
    ],
)
def test_bad_values_give_one_line_through_the_cli(tmp_path, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["train", "--model", "no/such-model", *argv, "--output", "o"])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------
# Chunked runs
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunked_head(tiny_llama):
    texts, labels = long_texts(48)
    clf = HeadClassifier(
        tiny_llama,
        progress=False,
        long_text="chunks",
        chunk_aggregation="attention",
        chunk_stride=2,
        max_chunks=3,
        **FAST,
    )
    return clf.fit(texts, labels)


def test_one_step_trains_lora_head_and_scorer_through_every_window(tiny_llama):
    from llmclf.labels import LabelSchema
    from llmclf.long_text import WindowCollator
    from llmclf.methods.head import chunk_head_logits

    texts, labels = long_texts(6)
    schema = LabelSchema.from_labels(labels, multi_label=False)
    clf = HeadClassifier(
        tiny_llama, progress=False, long_text="chunks", chunk_aggregation="attention", max_length=12
    )
    torch.manual_seed(0)
    clf._build(schema)
    model = clf.model_
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = [{"windows": w, "labels": y} for w, y in zip(clf._windows(texts), schema.encode(labels))]
    batch = WindowCollator(clf.tokenizer_.pad_token_id, torch.long)(rows)
    assert len(batch["input_ids"]) == int(batch["window_counts"].sum()) > len(texts)
    model.train()
    logits = chunk_head_logits(model, batch, "last", "attention")
    torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
    # the scorer's weight got a gradient from more than one window (softmax over one is
    # constant; its bias shifts every window's score alike, so its gradient is 0 exactly)
    scorer = dict(
        (n, p) for n, p in model.named_parameters() if "chunk_attention" in n and p.requires_grad
    )
    weight = next(p for n, p in scorer.items() if n.endswith("weight"))
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    clf._optimizer().step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any("lora_B" in n for n in changed)
    assert any("chunk_attention.modules_to_save" in n for n in changed)
    assert any("score.modules_to_save" in n for n in changed)


def window_sums(seen):
    """A forward that records each batch's shape and gives each text its real-token count
    over its windows and its largest id (a text's own token)."""

    def forward(batch):
        seen.append(tuple(batch["input_ids"].shape))
        assert len(batch["input_ids"]) == int(batch["window_counts"].sum())
        real = batch["attention_mask"].sum(dim=1).float()
        top = batch["input_ids"].max(dim=1).values.float()
        features, mask = group_windows(torch.stack([real, top], dim=1), batch["window_counts"])
        return torch.stack([features[..., 0].sum(dim=1), features[..., 1].max(dim=1).values], 1)

    return forward


@SETTINGS
@given(
    counts=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=4), min_size=1, max_size=12),
    batch_size=st.integers(1, 9),
    multiple=st.sampled_from([1, 8, 32]),
)
def test_served_windows_are_padded_to_buckets_and_each_text_keeps_its_result(
    counts, batch_size, multiple
):
    windows = [[[t + 1] * n for n in lengths] for t, lengths in enumerate(counts)]
    buckets = ShapeBuckets.for_batch_size(batch_size, multiple)
    seen = []
    with bounded_shapes(buckets):
        out = run_window_batches(
            windows, window_sums(seen), 0, batch_size, torch.device("cpu"), False
        )
    np.testing.assert_array_equal(out[:, 0], [sum(lengths) for lengths in counts])
    np.testing.assert_array_equal(out[:, 1], np.arange(1, len(counts) + 1))
    # a text with more windows than a batch holds gets its own batch, at its own count
    assert all((r in buckets.rows or r > batch_size) and w % multiple == 0 for r, w in seen)
    seen.clear()  # outside the context: exact shapes again
    exact = run_window_batches(
        windows, window_sums(seen), 0, batch_size, torch.device("cpu"), False
    )
    np.testing.assert_array_equal(exact, out)
    assert sum(r for r, _ in seen) == sum(len(lengths) for lengths in counts)


def test_the_window_warm_up_runs_every_shape_then_the_real_texts():
    windows = [[[5, 6, 9], [7, 9]], [[5, 6, 7, 8, 9, 9, 9, 9, 9, 9]]]  # longest window: 10
    buckets = ShapeBuckets.for_batch_size(4, width_multiple=4)
    seen = []
    with bounded_shapes(buckets, warm_up=True):
        out = run_window_batches(windows, window_sums(seen), 0, 4, torch.device("cpu"), False)
    warm = buckets.shapes(10, 4)
    assert seen[: len(warm)] == warm
    assert len(seen) > len(warm) and set(seen[len(warm) :]) <= set(warm)
    np.testing.assert_array_equal(out, [[5, 9], [10, 9]])


def test_a_chunked_run_predicts_the_same_inside_bounded_shapes(chunked_head):
    texts, _ = long_texts(7, seed=5)
    exact = chunked_head.predict_logits(texts)
    with bounded_shapes(ShapeBuckets.for_batch_size(8, width_multiple=8), warm_up=True):
        bucketed = chunked_head.predict_logits(texts)
    np.testing.assert_allclose(bucketed, exact, atol=1e-5)


def test_chunked_head_save_load_gives_identical_predictions(chunked_head, tmp_path):
    texts, _ = long_texts(10, seed=3)
    before = chunked_head.predict_proba(texts)
    chunked_head.save(tmp_path / "run")
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "long_text: chunks" in config and "chunk_aggregation: attention" in config
    loaded = HeadClassifier.load(tmp_path / "run", progress=False)
    assert loaded.config_.long_text.chunked
    np.testing.assert_allclose(loaded.predict_proba(texts), before, atol=1e-5)
    # the scorer came back from the run: another one would weigh the windows otherwise
    ours = dict(chunked_head.model_.named_parameters())
    for name, value in loaded.model_.named_parameters():
        if "chunk_attention.modules_to_save" in name:
            assert torch.equal(value, ours[name])


def test_chunks_read_past_the_first_window(chunked_head):
    """The same first window, different later windows: chunks sees the difference."""
    start = "match goal team player coach league win score season cup the a"
    texts = [
        start + " bank stock market price shares profit",
        start + " chip code app data robot phone",
    ]
    truncated = chunked_head.config_.model.max_length
    first = [chunked_head._windows([t])[0][0] for t in texts]
    assert first[0] == first[1] and len(first[0]) == truncated
    logits = chunked_head.predict_logits(texts)
    assert not np.allclose(logits[0], logits[1])


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_a_short_text_gets_the_same_logits_with_and_without_chunks(
    tiny_llama, tmp_path, aggregation
):
    texts, labels = make_texts(30)
    plain = HeadClassifier(tiny_llama, progress=False, **FAST).fit(texts, labels)
    plain.save(tmp_path / "run")
    chunked = HeadClassifier.load(
        tmp_path / "run", progress=False, long_text="chunks", chunk_aggregation=aggregation
    )
    short = [t for t in make_texts(40, seed=5)[0] if len(t.split()) < FAST["max_length"] - 1]
    assert len(short) > 5 and all(len(w) == 1 for w in chunked._windows(short))
    np.testing.assert_allclose(
        chunked.predict_logits(short), plain.predict_logits(short), atol=1e-5
    )


def test_attention_on_a_short_text_is_the_plain_head(chunked_head):
    from llmclf.batching import pad_batch
    from llmclf.methods.head import chunk_head_logits, head_logits

    short = ["bank stock", "goal match team", "chip"]
    model = chunked_head.model_
    with torch.no_grad():
        ids = chunked_head._windows(short)
        batch = pad_batch([w[0] for w in ids], chunked_head.tokenizer_.pad_token_id)
        plain = head_logits(model, batch)
        batch["window_counts"] = torch.ones(len(short), dtype=torch.long)
        chunked = chunk_head_logits(model, batch, "last", "attention")
    torch.testing.assert_close(chunked, plain)


def test_the_window_scorer_learns_at_the_heads_rate(tiny_llama, tiny_bert):
    """LoRA head and encoder runs train the fresh scorer as --lora none does: at
    --head-learning-rate, not at the (10x lower) rate of the pretrained weights."""
    from llmclf.labels import LabelSchema

    schema = LabelSchema.from_labels(["a", "b"], multi_label=False)
    chunked = dict(long_text="chunks", chunk_aggregation="attention", max_length=12)
    head = HeadClassifier(tiny_llama, progress=False, head_learning_rate=0.02, **chunked)
    head._build(schema)
    encoder = EncoderClassifier(tiny_bert, progress=False, head_learning_rate=0.02, **chunked)
    encoder.build_model(schema)
    for clf in (head, encoder):
        names = {id(p): n for n, p in clf.model_.named_parameters()}
        rates = {
            names[id(p)]: group["lr"]
            for group in clf._optimizer().param_groups
            for p in group["params"]
        }
        scorer = [n for n in rates if "chunk_attention" in n]
        assert scorer and all(rates[n] == 0.02 for n in scorer)


def test_chunks_on_short_training_texts_warn_in_one_line(tiny_llama, tiny_bert, caplog):
    """Texts of at most three windows (where chunks lost to truncate) get one warning at
    fit; longer texts none."""
    from llmclf.labels import LabelSchema

    schema = LabelSchema.from_labels(["a", "b"], multi_label=False)
    head = HeadClassifier(tiny_llama, progress=False, long_text="chunks", max_length=12)
    head._build(schema)
    encoder = EncoderClassifier(tiny_bert, progress=False, long_text="chunks", max_length=12)
    encoder.build_model(schema)
    for clf in (head, encoder):
        for n, warned in ((25, True), (40, False)):
            caplog.clear()
            with caplog.at_level("WARNING", logger="llmclf"):
                clf._warn_if_short([words(n, seed) for seed in range(3)])
            lines = [r.getMessage() for r in caplog.records]
            assert len(lines) == int(warned), (n, lines)
            assert all("--long-text truncate" in m and "\n" not in m for m in lines)


def test_frozen_chunks_train_the_head_and_scorer_on_cached_window_features(
    tiny_llama, tmp_path, monkeypatch
):
    monkeypatch.setenv("LLMCLF_CACHE", str(tmp_path / "cache"))
    texts, labels = long_texts(30)
    clf = HeadClassifier(
        tiny_llama,
        progress=False,
        lora="none",
        long_text="chunks",
        chunk_aggregation="attention",
        **{**FAST, "head_learning_rate": 5e-2},
    ).fit(texts, labels)
    scorer = clf.model_.chunk_attention.weight.detach().clone()
    clf.save(tmp_path / "run")
    loaded = HeadClassifier.load(tmp_path / "run", progress=False)
    assert torch.equal(loaded.model_.chunk_attention.weight, scorer)
    probe, _ = long_texts(8, seed=9)
    np.testing.assert_allclose(loaded.predict_proba(probe), clf.predict_proba(probe), atol=1e-5)


def test_chunked_encoder_save_load_and_short_texts(tiny_bert, tmp_path):
    texts, labels = long_texts(30)
    options = dict(epochs=2, batch_size=8, max_length=10, eval_batch_size=8, learning_rate=1e-3)
    clf = EncoderClassifier(
        tiny_bert, progress=False, long_text="chunks", chunk_aggregation="attention", **options
    ).fit(texts, labels)
    clf.save(tmp_path / "run")
    loaded = EncoderClassifier.load(tmp_path / "run", progress=False)
    probe, _ = long_texts(8, seed=9)
    np.testing.assert_allclose(loaded.predict_proba(probe), clf.predict_proba(probe), atol=1e-5)
    # a text of one window: the model's own forward (pooler, dropout, classifier)
    short = ["bank stock", "goal match"]
    with torch.no_grad():
        own = loaded.model_(**loaded.tokenizer_(short, padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(loaded.predict_logits(short), own.numpy(), atol=1e-5)


def test_head_tail_run_predicts_from_its_config_and_exports_with_a_note(tiny_llama, tmp_path):
    import pandas as pd

    from llmclf.runs import load_classifier
    from llmclf.runs.export import export_merged

    texts, labels = long_texts(40, repeat=3)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "d.csv", index=False)
    args = ["train", "--model", tiny_llama, "--data", str(tmp_path / "d.csv"), "--epochs", "1"]
    assert (
        main(
            [
                *args,
                "--max-length",
                "12",
                "--long-text",
                "head-tail",
                "--output",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    clf = load_classifier(tmp_path / "run", dtype="float32")
    assert clf.config_.long_text.long_text == "head-tail"
    ids = clf._encode(texts)
    assert max(len(i) for i in ids) == 12 and len(set(map(len, ids))) > 1
    info = export_merged(tmp_path / "run", tmp_path / "merged")
    assert info["parity"]["same_predictions"] and "head-tail" in info["long_text"]
    assert (
        "head-tail"
        in json.loads((tmp_path / "merged" / "llmclf_export.json").read_text())["long_text"]
    )


def test_a_chunked_run_is_refused_by_the_export_in_one_line(chunked_head, tmp_path, capsys):
    chunked_head.save(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--format", "merged"]) == 2
    err = capsys.readouterr().err
    assert "reads texts in windows (--long-text chunks)" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "merged").exists()


def test_int8_quantizes_a_chunked_run_but_keeps_its_window_scorer(chunked_head, tmp_path):
    from llmclf.runs import load_classifier

    texts, _ = long_texts(12, seed=5)
    run = chunked_head.save(tmp_path / "run")
    full = load_classifier(run, progress=False)
    fast = load_classifier(run, int8=True, progress=False)
    model = fast.model_.base_model.model
    blocks = [
        m
        for n, m in model.model.layers.named_modules()
        if type(m) is torch.nn.Linear and "lora_" not in n
    ]
    assert blocks and all(type(m.weight).__name__ == "Int8Tensor" for m in blocks)
    scorers = [
        m
        for n, m in model.named_modules()
        if "chunk_attention" in n and isinstance(m, torch.nn.Linear)
    ]
    assert scorers and all(m.weight.dtype == torch.float32 for m in scorers)
    assert type(scorers[0].weight).__name__ != "Int8Tensor"
    np.testing.assert_allclose(fast.predict_proba(texts), full.predict_proba(texts), atol=0.05)
