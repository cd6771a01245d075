"""Length-sorted batching: every row once, batches within the size, and the cuts the
cheapest there are (checked against every way of cutting, on small inputs)."""

import itertools
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmclf.batching import forward_overhead_tokens, length_sorted_batches, run_batches


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
