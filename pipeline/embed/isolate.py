"""Finding the chunks an embedding model fails on, so the rest of their batch is still embedded.

A forward pass that raises a non-transient error (the model or tokenizer
refuses some input) is retried on each half of the batch, recursively: the
halves that pass are kept, and a failing half of one text names that text.
Cost: about two more forward passes' worth of tokens per failing text
(n + n/2 + n/4 ...), so a bad chunk costs its batch-mates little.

An error that fails every text on its own is not the texts' fault (a broken
model, a lost device): when nothing in the batch passed, one probe text is
embedded, and if that fails too the original error is raised for the whole
batch, as a transient error is, instead of blaming every chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from docpipe.embed.oom import is_cuda_oom
from docpipe.errors import RetryableError

__all__ = ["PROBE_TEXT", "Isolated", "embed_isolating", "is_transient"]

PROBE_TEXT = "docpipe probe: is the embedding model healthy?"


def is_transient(exc: BaseException) -> bool:
    """Errors that say nothing about the texts: retried later for the whole batch (lease expiry)."""
    if isinstance(exc, (RetryableError, MemoryError, ConnectionError)) or is_cuda_oom(exc):
        return True
    from psycopg import OperationalError as PsycopgOperational
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, (OperationalError, PsycopgOperational))


@dataclass
class Isolated:
    """A batch's outcome: `vectors[i]` belongs to `texts[ok[i]]`; `failed` maps an index to its error."""

    ok: list[int] = field(default_factory=list)
    vectors: np.ndarray | None = None
    failed: dict[int, BaseException] = field(default_factory=dict)
    passes: int = 0  # forward passes run, the first included


def embed_isolating(
    embed: Callable[[list[str]], np.ndarray],
    texts: Sequence[str],
    *,
    transient: Callable[[BaseException], bool] = is_transient,
) -> Isolated:
    """`embed(texts)`; on a non-transient error, halve and retry until each failing text stands alone.

    Transient errors propagate (nothing is blamed). Raises the first error when no text passes and the
    probe text fails too (the model, not the input, is broken).
    """
    out = Isolated()
    parts: list[np.ndarray] = []

    def attempt(lo: int, hi: int) -> BaseException | None:
        out.passes += 1
        try:
            vectors = embed(list(texts[lo:hi]))
        except Exception as exc:
            if transient(exc):
                raise
            return exc
        out.ok.extend(range(lo, hi))
        parts.append(np.asarray(vectors))
        return None

    def split(lo: int, hi: int, error: BaseException) -> None:
        if hi - lo == 1:
            out.failed[lo] = error
            return
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            if (err := attempt(a, b)) is not None:
                split(a, b, err)

    if not texts:
        return out
    first = attempt(0, len(texts))
    if first is not None:
        split(0, len(texts), first)
        if not out.ok and attempt_probe(embed, transient) is not None:
            raise first
    out.vectors = np.concatenate(parts) if parts else None
    return out


def attempt_probe(
    embed: Callable[[list[str]], np.ndarray], transient: Callable[[BaseException], bool]
) -> BaseException | None:
    """None when the model embeds an ordinary short text; else its error."""
    try:
        embed([PROBE_TEXT])
    except Exception as exc:
        if transient(exc):
            raise
        return exc
    return None
