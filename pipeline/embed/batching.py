"""Pure functions that pack token sequences into padded micro-batches.

Nothing here knows about models: the input is token counts, the output is
index lists. A micro-batch costs ``len(batch) * longest`` padded tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_micro_batches(
    token_counts: Sequence[int], max_padded_tokens: int, *, max_batch_size: int | None = None
) -> list[list[int]]:
    """Indices grouped longest first so that each batch's padded tokens stay within the budget.

    Items are sorted by length (descending, ties by index) and consecutive items
    share a batch while ``len(batch) * longest <= max_padded_tokens`` and the
    batch holds at most ``max_batch_size`` items. An item longer than the budget
    gets a batch of its own. Every index appears in exactly one batch.
    """
    if max_padded_tokens < 1:
        raise ValueError(f"max_padded_tokens must be positive, got {max_padded_tokens}")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
    order = sorted(range(len(token_counts)), key=lambda i: (-token_counts[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current:
            longest = token_counts[current[0]]  # sorted descending: the first is the longest
            full = max_batch_size is not None and len(current) >= max_batch_size
            if full or (len(current) + 1) * longest > max_padded_tokens:
                batches.append(current)
                current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def padding_waste(token_counts: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction (0..1) of the padded token slots in ``batches`` that hold padding."""
    padded = sum(len(batch) * max(token_counts[i] for i in batch) for batch in batches if batch)
    if padded == 0:
        return 0.0
    real = sum(token_counts[i] for batch in batches for i in batch)
    return 1.0 - real / padded


def take_token_budget(token_counts: Sequence[int], budget: int) -> int:
    """How many leading items fit in ``budget`` tokens in total; at least 1 when there are items."""
    total = 0
    for taken, count in enumerate(token_counts):
        total += count
        if total > budget:
            return max(taken, 1)
    return len(token_counts)


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int) -> np.ndarray:
    """Right-pad integer rows to the longest one: an int64 array of shape (len(rows), longest)."""
    width = max((len(row) for row in rows), default=0)
    out = np.full((len(rows), width), pad_value, dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return out
