"""Survive CUDA out-of-memory by halving the micro-batch and retrying both halves."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from docpipe.errors import RetryableError

log = logging.getLogger(__name__)

Item = TypeVar("Item")


def is_cuda_oom(exc: BaseException) -> bool:
    """True for ``torch.OutOfMemoryError`` and the older RuntimeError "CUDA out of memory"."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def empty_cuda_cache() -> None:
    """Give cached CUDA blocks back so the retried halves start from a clean allocator."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_split(
    fn: Callable[[Sequence[Item]], np.ndarray],
    batch: Sequence[Item],
    *,
    is_oom: Callable[[BaseException], bool],
    on_oom: Callable[[], None] = empty_cuda_cache,
    tokens_of: Callable[[Item], int] = len,  # type: ignore[assignment]
) -> np.ndarray:
    """``fn(batch)``; on out-of-memory, ``fn`` on each half (recursively), rows concatenated in order.

    Raises ``RetryableError`` when a single item still does not fit; other errors propagate.
    """
    try:
        return fn(batch)
    except Exception as exc:
        if not is_oom(exc):
            raise
    # Retry outside the except block: the traceback pins the failed pass's tensors until it ends.
    on_oom()
    if len(batch) <= 1:
        tokens = tokens_of(batch[0]) if batch else 0
        raise RetryableError(f"CUDA out of memory on a single sequence of {tokens} tokens")
    half = len(batch) // 2
    log.warning(
        "out of memory on a micro-batch of %d sequences; retrying as %d + %d", len(batch), half, len(batch) - half
    )
    first = run_with_oom_split(fn, batch[:half], is_oom=is_oom, on_oom=on_oom, tokens_of=tokens_of)
    second = run_with_oom_split(fn, batch[half:], is_oom=is_oom, on_oom=on_oom, tokens_of=tokens_of)
    return np.concatenate([first, second])
