"""Properties of micro-batch packing: every item once, budget kept, lengths sorted."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe.embed.batching import pack_micro_batches, pad_rows, padding_waste, take_token_budget

counts = st.lists(st.integers(min_value=1, max_value=600), max_size=200)
budgets = st.integers(min_value=1, max_value=20_000)
sizes = st.none() | st.integers(min_value=1, max_value=64)


@given(counts, budgets, sizes)
def test_every_item_in_exactly_one_batch(token_counts, budget, max_batch_size):
    batches = pack_micro_batches(token_counts, budget, max_batch_size=max_batch_size)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(token_counts)))
    assert all(batches)


@given(counts, budgets, sizes)
def test_batches_keep_the_budget_unless_one_item_exceeds_it(token_counts, budget, max_batch_size):
    for batch in pack_micro_batches(token_counts, budget, max_batch_size=max_batch_size):
        longest = max(token_counts[i] for i in batch)
        assert len(batch) * longest <= budget or len(batch) == 1
        assert max_batch_size is None or len(batch) <= max_batch_size


@given(counts, budgets)
def test_lengths_descend_within_and_across_batches(token_counts, budget):
    order = [token_counts[i] for batch in pack_micro_batches(token_counts, budget) for i in batch]
    assert order == sorted(order, reverse=True)


@given(counts, budgets)
def test_packing_is_greedy(token_counts, budget):
    """A batch only closes when the next item would break the budget."""
    batches = pack_micro_batches(token_counts, budget)
    for batch in batches[:-1]:
        longest = token_counts[batch[0]]
        assert (len(batch) + 1) * longest > budget


@given(counts, budgets)
def test_padding_waste_is_a_fraction(token_counts, budget):
    waste = padding_waste(token_counts, pack_micro_batches(token_counts, budget))
    assert 0.0 <= waste < 1.0


def test_sorting_cuts_padding_waste():
    token_counts = [10, 250, 12, 240, 11, 260, 9, 255]
    unsorted = [[0, 1], [2, 3], [4, 5], [6, 7]]
    packed = pack_micro_batches(token_counts, 2 * 260)
    assert padding_waste(token_counts, packed) < 0.05 < padding_waste(token_counts, unsorted)


def test_item_longer_than_budget_rides_alone():
    assert pack_micro_batches([5, 900, 5], 100) == [[1], [0, 2]]


def test_rejects_nonsense_budgets():
    with pytest.raises(ValueError):
        pack_micro_batches([1], 0)
    with pytest.raises(ValueError):
        pack_micro_batches([1], 10, max_batch_size=0)


@given(counts, st.integers(min_value=0, max_value=5_000))
def test_take_token_budget(token_counts, budget):
    taken = take_token_budget(token_counts, budget)
    if not token_counts:
        assert taken == 0
        return
    assert 1 <= taken <= len(token_counts)
    assert taken == 1 or sum(token_counts[:taken]) <= budget
    assert taken == len(token_counts) or sum(token_counts[: taken + 1]) > budget


def test_pad_rows_right_pads():
    padded = pad_rows([[1, 2, 3], [4]], pad_value=0)
    assert padded.dtype == np.int64
    assert padded.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_rows([], 0).shape == (0, 0)
