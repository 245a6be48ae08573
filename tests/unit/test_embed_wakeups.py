"""Embed wake-ups: one message per drain, not per parsed document, and none lost."""

from __future__ import annotations

import contextlib

import pytest


class FakeRedis:
    """The two commands the wake-up mark uses, with SET NX semantics (expiry ignored)."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}

    def set(self, key: str, value: str, *, nx: bool = False, ex: int | None = None) -> bool:
        if nx and key in self.keys:
            return False
        self.keys[key] = value
        return True

    def delete(self, key: str) -> int:
        return int(self.keys.pop(key, None) is not None)


@pytest.fixture(scope="module")
def tasks():
    """The worker tasks module; its app is built for a broker it never contacts (the pool is faked)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
        from docpipe.workers import tasks

        yield tasks


@pytest.fixture
def sent(tasks, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    redis = FakeRedis()
    monkeypatch.setattr(tasks, "_broker_redis", lambda: contextlib.nullcontext(redis))
    messages: list[str] = []
    monkeypatch.setattr(tasks.embed, "delay", messages.append)
    return messages


def test_wake_ups_are_sent_once_until_the_drain_starts(tasks, sent: list[str]) -> None:
    for _ in range(5):
        tasks.wake_embedder("model-a")
    tasks.wake_embedder("model-b")
    assert sent == ["model-a", "model-b"]

    tasks._clear_wake_mark("model-a")  # the embed task starts: later commits need a new wake-up
    tasks.wake_embedder("model-a")
    assert sent == ["model-a", "model-b", "model-a"]


def test_a_broker_without_the_mark_still_wakes(tasks, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken():
        raise ConnectionError("no broker")

    monkeypatch.setattr(tasks, "_broker_redis", broken)
    messages: list[str] = []
    monkeypatch.setattr(tasks.embed, "delay", messages.append)
    tasks.wake_embedder("model-a")
    tasks.wake_embedder("model-a")
    assert messages == ["model-a", "model-a"]
