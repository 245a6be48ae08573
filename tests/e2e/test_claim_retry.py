"""A parse task that loses the database mid-save is retried by Celery and resumes its own claim.

On the running stack (real parse worker, lease 60 s): the COPY of the document's chunks fails
once with a real `OperationalError` (psycopg's: the COPY runs on the raw connection) and so does
putting the document back to `queued`, so it stays `parsing` under its lease. The message's Celery
retry carries the same task id and takes the claim back as attempt 2; had it not, only the sweeper's
message (another task id) could have taken it, after the lease.
"""

from __future__ import annotations

import hashlib
import time
import uuid

from sqlalchemy import text

from docpipe import store
from docpipe.workers.queues import PARSE_TASK, ROUTES
from tests import db_faults


def test_a_parse_task_resumes_its_claim_after_a_database_error_mid_copy(client) -> None:
    body = " ".join(f"Line {i}: a retried task takes back its own claim." for i in range(200)).encode()
    with client.sessions.begin() as s:
        coll = store.ensure_collection(s, "claim-retry", model=client.settings.embed.model, dim=384)
        [(doc_id, _)] = store.insert_documents(
            s,
            coll.id,
            [store.NewDocument("/retry.txt", hashlib.sha256(body).digest(), "text/plain", body, len(body), {})],
        )
    db_faults.install(client.sessions)
    try:
        db_faults.inject(client.sessions, "chunks", doc_id, 1)
        db_faults.inject(client.sessions, "documents", doc_id, 1, state="queued")
        task_id = f"claim-retry-{uuid.uuid4()}"
        client.task_queue.app.send_task(PARSE_TASK, args=(doc_id,), task_id=task_id, **ROUTES[PARSE_TASK])
        deadline = time.monotonic() + 180
        while True:
            with client.sessions.begin() as s:
                row = s.execute(
                    text("SELECT state, attempts, claimed_by, last_error FROM documents WHERE id = :d"), {"d": doc_id}
                ).one()
            if row.state in ("embedding", "ready", "failed"):
                break
            assert time.monotonic() < deadline, f"document still {row.state} after 180 s"
            time.sleep(0.2)
    finally:
        db_faults.uninstall(client.sessions)
    assert (row.state in ("embedding", "ready"), row.attempts, row.claimed_by) == (True, 2, task_id), row.last_error
