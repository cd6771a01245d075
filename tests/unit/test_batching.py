"""Length-sorted batching: every row once, batches within the size, and the cuts the
cheapest there are (checked against every way of cutting, on small inputs); bounded
shapes: every batch padded to a bucket, padding rows dropped, the warm-up runs each."""

import itertools
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmclf.batching import (
    ShapeBuckets,
    bounded_shapes,
    fitted,
    forward_overhead_tokens,
    length_sorted_batches,
    run_batches,
)


def cost(lengths, batches, overhead):
    return sum(overhead + len(b) * max(lengths[i] for i in b) for b in batches)


def cheapest(lengths, batch_size, overhead):
    """The least cost over every cut of the sorted rows into runs of <= batch_size."""
    ordered = sorted(lengths, reverse=True)
    n = len(ordered)
    best = math.inf
    for cuts in itertools.product([0, 1], repeat=max(n - 1, 0)):
        sizes, run = [], 1
        for cut in cuts:
            if cut:
                sizes.append(run)
                run = 1
            else:
                run += 1
        sizes.append(run)
        if max(sizes) > batch_size:
            continue
        total, start = 0, 0
        for size in sizes:
            total += overhead + size * ordered[start]
            start += size
        best = min(best, total)
    return best


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=9),
    batch_size=st.integers(1, 5),
    overhead=st.sampled_from([0, 16, 128, 1000]),
)
def test_batches_cover_every_row_and_cost_the_least(lengths, batch_size, overhead):
    batches = length_sorted_batches(lengths, batch_size, overhead)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first
    assert cost(lengths, batches, overhead) == cheapest(lengths, batch_size, overhead)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=40), batch_size=st.integers(1, 8))
def test_infinite_overhead_gives_the_fewest_batches(lengths, batch_size):
    batches = length_sorted_batches(lengths, batch_size)
    assert len(batches) == math.ceil(len(lengths) / batch_size)


def test_a_mixed_handful_splits_by_length_and_a_uniform_one_does_not():
    mixed = [256, 40, 250, 30, 256, 35, 240, 20]
    batches = length_sorted_batches(mixed, 32, overhead_tokens=128)
    assert [sorted(mixed[i] for i in b) for b in batches] == [
        [240, 250, 256, 256],
        [20, 30, 35, 40],
    ]
    uniform = [200, 201, 199, 200, 202, 198]
    assert len(length_sorted_batches(uniform, 32, overhead_tokens=128)) == 1


def test_device_overheads():
    assert forward_overhead_tokens("cpu") < forward_overhead_tokens("cuda")
    assert forward_overhead_tokens(torch.device("cpu")) == forward_overhead_tokens(None)


def test_run_batches_puts_rows_back_in_input_order():
    sequences = [[1] * n for n in (5, 90, 3, 70, 8, 100, 2)]
    seen_shapes = []

    def forward(batch):
        seen_shapes.append(tuple(batch["input_ids"].shape))
        return batch["attention_mask"].sum(dim=1, keepdim=True).float()

    out = run_batches(sequences, forward, 0, 4, torch.device("cpu"), progress=False)
    np.testing.assert_array_equal(out[:, 0], [5, 90, 3, 70, 8, 100, 2])
    # the long rows and the short ones are padded apart, not together
    assert sorted(seen_shapes) == [(3, 100), (4, 8)]


def test_shape_buckets_for_a_batch_size():
    assert ShapeBuckets.for_batch_size(32).rows == (1, 2, 4, 8, 16, 32)
    assert ShapeBuckets.for_batch_size(1).rows == (1,)
    buckets = ShapeBuckets.for_batch_size(12, width_multiple=16)
    assert [buckets.padded_rows(n) for n in (1, 3, 8, 9, 12)] == [1, 4, 8, 12, 12]
    assert [buckets.padded_width(w) for w in (0, 1, 16, 17)] == [16, 16, 16, 32]
    # every shape a batch of <= 12 rows of <= 40 tokens can take, and nothing else
    shapes = buckets.shapes(40, 12)
    assert sorted(shapes) == sorted(itertools.product((1, 2, 4, 8, 12), (16, 32, 48)))
    assert buckets.shapes(40, 3) == [(4, 48), (4, 32), (4, 16), (2, 48), (2, 32), (2, 16),
                                     (1, 48), (1, 32), (1, 16)]  # fmt: skip


def test_shape_buckets_refuse_nonsense():
    for bad in ({"width_multiple": 0}, {"rows": ()}, {"rows": (4, 2)}, {"rows": (0, 1)}):
        try:
            ShapeBuckets(**bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")


def test_fitted_keeps_the_end():
    assert fitted([1, 2, 3, 4], 2) == [3, 4]
    assert fitted([7, 8], 4) == [7, 7, 7, 8]
    assert fitted([7, 8], 2) == [7, 8]


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 120), min_size=1, max_size=30),
    batch_size=st.integers(1, 9),
    multiple=st.sampled_from([1, 8, 32]),
    side=st.sampled_from(["left", "right"]),
)
def test_bounded_shapes_pad_to_buckets_and_give_each_row_its_own_result(
    lengths, batch_size, multiple, side
):
    sequences = [[i + 1] * n for i, n in enumerate(lengths)]
    buckets = ShapeBuckets.for_batch_size(batch_size, multiple)
    seen = []

    def forward(batch):
        seen.append(tuple(batch["input_ids"].shape))
        real = batch["attention_mask"].sum(dim=1, keepdim=True)
        first = batch["input_ids"].max(dim=1, keepdim=True).values  # the row's own token
        return torch.cat([real, first], dim=1).float()

    with bounded_shapes(buckets):
        out = run_batches(
            sequences, forward, 0, batch_size, torch.device("cpu"), progress=False,
            padding_side=side, overhead_tokens=64,
        )  # fmt: skip
    np.testing.assert_array_equal(out[:, 0], lengths)
    np.testing.assert_array_equal(out[:, 1], np.arange(1, len(lengths) + 1))
    assert all(r in buckets.rows and w % multiple == 0 for r, w in seen)
    assert all(r <= batch_size for r, _ in seen)
    # outside the context: exact shapes again
    seen.clear()
    run_batches(sequences, forward, 0, batch_size, torch.device("cpu"), progress=False)
    assert sum(r for r, _ in seen) == len(lengths)


def test_the_warm_up_runs_every_shape_once_then_the_real_rows():
    sequences = [[5, 6, 9], [5, 6, 7, 8, 9, 9, 9, 9, 9, 9]]  # the longest: 10 tokens
    buckets = ShapeBuckets.for_batch_size(4, width_multiple=4)
    seen = []

    def forward(batch):
        seen.append(tuple(batch["input_ids"].shape))
        real = batch["attention_mask"].sum(dim=1, keepdim=True)
        assert (batch["input_ids"].gather(1, real - 1) == 9).all()  # each row's end was kept
        return real.float()

    with bounded_shapes(buckets, warm_up=True):
        out = run_batches(sequences, forward, 0, 4, torch.device("cpu"), progress=False)
    warm = buckets.shapes(10, 4)
    assert seen[: len(warm)] == warm
    assert set(seen[len(warm) :]) <= set(warm)  # the real batches: shapes already run
    np.testing.assert_array_equal(out[:, 0], [3, 10])
