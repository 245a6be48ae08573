"""CUDA out-of-memory splitting, exercised on CPU by injecting the error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from docpipe.embed.oom import is_cuda_oom, run_with_oom_split
from docpipe.errors import RetryableError


class FakeModel:
    """Doubles each item's value; raises torch's OOM error on batches above ``limit`` items."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls: list[int] = []
        self.cache_emptied = 0

    def __call__(self, batch):
        self.calls.append(len(batch))
        if len(batch) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.array([[2.0 * len(item)] for item in batch], dtype=np.float32)

    def empty_cache(self) -> None:
        self.cache_emptied += 1


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100])
def test_split_results_identical_and_in_order(limit):
    batch = [[0] * n for n in range(1, 24)]
    model = FakeModel(limit)
    got = run_with_oom_split(model, batch, is_oom=is_cuda_oom, on_oom=model.empty_cache)
    assert got.tolist() == FakeModel(10**6)(batch).tolist()
    assert max(n for n in model.calls if n <= limit) <= limit
    assert model.cache_emptied == sum(1 for n in model.calls if n > limit)


def test_single_sequence_oom_is_retryable_with_its_length():
    model = FakeModel(0)
    with pytest.raises(RetryableError, match="single sequence of 300 tokens"):
        run_with_oom_split(model, [[0] * 300], is_oom=is_cuda_oom, on_oom=model.empty_cache)


def test_other_errors_propagate_unsplit():
    def broken(batch):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_with_oom_split(broken, [[1], [2]], is_oom=is_cuda_oom, on_oom=lambda: None)


def test_recognises_old_style_runtime_error():
    assert is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_cuda_oom(torch.OutOfMemoryError("boom"))
    assert not is_cuda_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
