"""Keeping a parse claim's lease alive while its worker is still working on it.

The lease (`worker.lease_s`) is how long a silent worker keeps a document: after it, the sweeper
hands the document to another worker. A parse request is bounded below the lease
(`Settings._leases_outlive_work`), but chunking a long document and saving its chunks are not, and
a task may run until `worker.task_soft_time_limit_s`. So while a worker holds a claim, a thread
renews the lease every third of it; when the process dies (or Celery kills it at the hard time
limit), the renewals stop and the lease runs out as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from types import TracebackType

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from docpipe import states

__all__ = ["LeaseKeeper"]

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Context manager: renews the (document id, attempt) `claims` every `lease_s / 3` seconds until exit."""

    def __init__(self, sessions: sessionmaker[Session], claims: Sequence[tuple[int, int]], *, lease_s: int) -> None:
        self.sessions = sessions
        self.claims = list(claims)
        self.lease_s = lease_s
        self.renewals = 0  # rounds of renewals so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.claims[0][0]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                with self.sessions.begin() as session:
                    if not states.renew_claims(session, self.claims, lease_s=self.lease_s):
                        return  # all finished, failed, or taken over: nothing left to keep
                self.renewals += 1
            except SQLAlchemyError as err:  # the next tick tries again; the lease has two thirds left
                log.warning("could not renew the leases of documents %s: %s", [d for d, _ in self.claims], err)
