"""Isolating the texts an embedding model fails on (a fake model: a pure unit)."""

from __future__ import annotations

import numpy as np
import pytest

from docpipe.embed.isolate import PROBE_TEXT, embed_isolating, is_transient
from docpipe.errors import RetryableError


class Model:
    """Embeds each text as [len, index-in-call]; raises ValueError on texts containing 'BAD'."""

    def __init__(self, error: type[Exception] = ValueError, fail_all: bool = False) -> None:
        self.error = error
        self.fail_all = fail_all
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(texts)
        bad = [t for t in texts if "BAD" in t]
        if self.fail_all or bad:
            raise self.error(f"cannot embed {bad[:1] or texts[:1]}")
        return np.array([[len(t), i] for i, t in enumerate(texts)], dtype=np.float32)


def test_a_clean_batch_is_one_pass() -> None:
    model = Model()
    out = embed_isolating(model, ["a", "bb", "ccc"])
    assert out.ok == [0, 1, 2] and out.failed == {} and out.passes == 1
    assert out.vectors is not None and out.vectors[:, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize("bad", [[0], [7], [15], [3, 4], [0, 9, 15]])
def test_only_the_failing_texts_are_blamed_and_every_other_vector_is_kept_in_order(bad: list[int]) -> None:
    texts = [("BAD" if i in bad else "") + "x" * (i + 1) for i in range(16)]
    model = Model()
    out = embed_isolating(model, texts)
    assert sorted(out.failed) == bad
    assert all("cannot embed" in str(e) and isinstance(e, ValueError) for e in out.failed.values())
    assert out.ok == [i for i in range(16) if i not in bad]
    assert out.vectors is not None
    assert out.vectors[:, 0].tolist() == [len(texts[i]) for i in out.ok]  # row j belongs to texts[ok[j]]
    if len(bad) == 1:  # the first pass, then two halves per level down to one text: 1 + 2 * log2(16)
        assert out.passes == 9
    assert sum(len(c) for c in model.calls) <= 3 * 16 * len(bad)


def test_a_transient_error_is_raised_without_blaming_anything() -> None:
    model = Model(error=RetryableError)
    with pytest.raises(RetryableError):
        embed_isolating(model, ["BAD one", "two", "three"])
    assert len(model.calls) == 1


def test_a_transient_error_while_splitting_is_raised_too() -> None:
    calls = 0

    def model(texts: list[str]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad input")
        raise MemoryError

    with pytest.raises(MemoryError):
        embed_isolating(model, ["a", "b", "c", "d"])


def test_a_model_that_fails_every_text_and_the_probe_is_broken_not_the_texts() -> None:
    model = Model(error=RuntimeError, fail_all=True)
    with pytest.raises(RuntimeError, match="cannot embed"):
        embed_isolating(model, ["a", "b", "c"])
    assert model.calls[-1] == [PROBE_TEXT]


def test_a_single_failing_text_is_blamed_when_the_probe_passes() -> None:
    model = Model()
    out = embed_isolating(model, ["BAD alone"])
    assert list(out.failed) == [0] and out.ok == [] and out.vectors is None
    assert model.calls == [["BAD alone"], [PROBE_TEXT]]


def test_a_one_off_error_costs_nothing_when_the_halves_pass() -> None:
    calls = 0

    def model(texts: list[str]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("glitch")
        return np.ones((len(texts), 2), dtype=np.float32)

    out = embed_isolating(model, ["a", "b", "c"])
    assert out.ok == [0, 1, 2] and out.failed == {} and out.passes == 3


def test_transient_classification() -> None:
    import psycopg
    from sqlalchemy.exc import OperationalError

    assert is_transient(RetryableError("x")) and is_transient(MemoryError())
    assert is_transient(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert is_transient(psycopg.OperationalError("gone"))
    assert is_transient(OperationalError("SELECT 1", {}, Exception("gone")))
    assert not is_transient(ValueError("bad text")) and not is_transient(RuntimeError("index out of range"))
