"""The one retry policy: how often a document is tried, how long between tries, what its failure says.

The database counts: `documents.attempts` goes up by one at every claim of a
document (a first try, a Celery retry resuming its own claim, a message the
sweeper sent after a lease expired), and a document whose attempts are used
up fails with `gave_up`, whichever path tried it last. Celery's own retry
count only bounds how often one message is re-sent (`message_retries`: for
about one lease, while only that message can resume its claim; after it the
sweeper re-sends the work); it never decides a document's fate.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from docpipe.config import Settings

__all__ = ["RetryPolicy"]

LEASE_EXPIRED = "the last attempt's worker died or timed out (lease expired)"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int  # claims of one document before it fails for good (worker.max_attempts)
    backoff_s: float = 2.0  # seconds before the first retry; doubles with each retry
    backoff_max_s: float = 120.0  # seconds: the longest wait between two retries
    lease_s: float = 300.0  # seconds a claim lasts unrenewed (worker.lease_s)

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        w = settings.worker
        return cls(w.max_attempts, w.retry_backoff_s, w.retry_backoff_max_s, w.lease_s)

    @property
    def message_retries(self) -> int:
        """Times one task message is re-sent: at least `max_attempts`, and until its shortest waits add up
        to a lease (a database restart is ridden out; past a lease the sweeper re-sends the work)."""
        waited, retries = 0.0, 0
        while retries < self.max_attempts or waited < self.lease_s:
            waited += min(self.backoff_max_s, self.backoff_s * 2.0**retries) / 2
            retries += 1
        return retries

    def exhausted(self, attempts: int) -> bool:
        """True when a document claimed `attempts` times may not be claimed again."""
        return attempts >= self.max_attempts

    def delay_s(self, retries: int, *, rng: random.Random | None = None) -> float:
        """Seconds before retry number `retries` + 1 (0-based): full jitter under an exponential, capped."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2.0 ** max(retries, 0))
        return (rng or random).uniform(ceiling / 2, ceiling)

    @staticmethod
    def gave_up(attempts: int, last_error: str | None, *, lease_expired: bool = False) -> str:
        """The failure reason of a document out of attempts: how many, and the last error recorded."""
        reason = f"gave up after {attempts} attempts; last error: {last_error or 'none recorded'}"
        return f"{reason}; {LEASE_EXPIRED}" if lease_expired else reason
