"""The retry policy and the settings that keep leases and time limits consistent."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from docpipe.config import OcrConfig, ParseLimits, Settings, WorkerConfig
from docpipe.retry import RetryPolicy


def test_policy_comes_from_the_worker_settings() -> None:
    policy = RetryPolicy.of(Settings(worker=WorkerConfig(max_attempts=4, retry_backoff_s=1.5, retry_backoff_max_s=9)))
    assert (policy.max_attempts, policy.backoff_s, policy.backoff_max_s, policy.lease_s) == (4, 1.5, 9, 300)
    assert [policy.exhausted(n) for n in (0, 3, 4, 5)] == [False, False, True, True]


def test_a_message_is_retried_for_about_one_lease() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_s=2, backoff_max_s=120, lease_s=300)
    # shortest waits 1, 2, 4, 8, 16, 32, 60, 60, 60, 60 s: 303 s >= the lease after 10 retries
    assert policy.message_retries == 10
    assert RetryPolicy(max_attempts=5, backoff_s=100, backoff_max_s=100, lease_s=60).message_retries == 5


def test_backoff_doubles_with_jitter_under_a_cap() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_s=2, backoff_max_s=20)
    rng = random.Random(7)
    for retries, ceiling in [(0, 2), (1, 4), (2, 8), (3, 16), (4, 20), (30, 20)]:
        delays = [policy.delay_s(retries, rng=rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered: retries of many documents spread out


def test_the_failure_reason_says_how_many_attempts_and_the_last_error() -> None:
    assert RetryPolicy.gave_up(3, "OperationalError: server closed the connection") == (
        "gave up after 3 attempts; last error: OperationalError: server closed the connection"
    )
    assert RetryPolicy.gave_up(2, None, lease_expired=True) == (
        "gave up after 2 attempts; last error: none recorded; "
        "the last attempt's worker died or timed out (lease expired)"
    )


def test_defaults_are_consistent() -> None:
    w = Settings().worker
    assert w.task_soft_time_limit_s < w.task_time_limit_s


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        (dict(worker=WorkerConfig(lease_s=200)), "worker.lease_s (200 s) must exceed parse.timeout_s"),
        (
            dict(worker=WorkerConfig(task_soft_time_limit_s=900, task_time_limit_s=900)),
            "worker.task_soft_time_limit_s (900 s) must lie between",
        ),
        (
            dict(
                parse=ParseLimits(timeout_s=400),
                ocr=OcrConfig(mode="off"),
                worker=WorkerConfig(lease_s=500, task_soft_time_limit_s=300),
            ),
            "one parse request (400 s",
        ),
    ],
)
def test_leases_and_time_limits_that_cannot_work_are_refused(settings: dict, names: str) -> None:
    with pytest.raises(ValidationError, match=names.replace("(", r"\(").replace(")", r"\)")):
        Settings(**settings)


def test_max_attempts_is_at_least_one() -> None:
    with pytest.raises(ValidationError):
        WorkerConfig(max_attempts=0)
