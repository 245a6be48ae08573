"""The races of a claimed document, each forced into one order on a real Postgres (no sleeps deciding outcomes).

Faults are real database errors: a trigger raises SQLSTATE 57P01 (admin_shutdown, an
`OperationalError`) on the rows and times a test names, so a COPY of chunks fails half-way
exactly as a dropped server would make it fail.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from docpipe import processing, states, store, sweeper
from docpipe.config import ParseLimits, Settings, WorkerConfig
from docpipe.lease import LeaseKeeper
from docpipe.parse import SandboxedParser
from docpipe.processing import DATABASE_LOST
from docpipe.types import Chunk

_names = itertools.count()
BODY = " ".join(f"Sentence number {i} talks about lease renewal and claims." for i in range(400)).encode()


@pytest.fixture(scope="module")
def parser():
    with SandboxedParser(ParseLimits(timeout_s=60)) as p:
        yield p


def queued(sessions, model: str, body: bytes = BODY, media_type: str = "text/plain", dim: int = 384) -> int:
    name = f"race{next(_names)}"
    with sessions.begin() as s:
        coll = store.ensure_collection(s, name, model=model, dim=dim)
        [(doc_id, _)] = store.insert_documents(
            s, coll.id, [store.NewDocument(f"/{name}", hashlib.sha256(body).digest(), media_type, body, len(body), {})]
        )
    return doc_id


def row(sessions, doc_id: int):
    with sessions.begin() as s:
        return s.execute(
            text(
                "SELECT state, attempts, claimed_by, last_error, lease_until - now() AS lease_left, "
                "  (SELECT count(*) FROM chunks c WHERE c.document_id = d.id) AS chunks FROM documents d WHERE id = :d"
            ),
            {"d": doc_id},
        ).one()


def settings(tmp_path: Path, **worker) -> Settings:
    return Settings(data_dir=tmp_path, worker=WorkerConfig(**{"lease_s": 300, **worker}))


def test_a_retry_resumes_its_own_claim_after_a_database_error_mid_copy(
    sessions, parser, faults, minilm_dir: Path, tmp_path: Path
) -> None:
    cfg = settings(tmp_path)
    doc_id = queued(sessions, str(minilm_dir))
    faults("chunks", doc_id, 1)  # the COPY of chunks fails half-way...
    faults("documents", doc_id, 1, state="queued")  # ...and so does putting the document back
    run = dict(sessions=sessions, parser=parser, settings=cfg)
    with pytest.raises(DATABASE_LOST, match="injected fault on chunks"):
        processing.parse_document(doc_id, token="task-a", **run)
    stuck = row(sessions, doc_id)
    assert (stuck.state, stuck.attempts, stuck.claimed_by, stuck.chunks) == ("parsing", 1, "task-a", 0)
    assert stuck.lease_left.total_seconds() > 200  # before: the retry waited all of this out

    other = processing.parse_document(doc_id, token="another-message", **run)
    assert other.state == "skipped" and row(sessions, doc_id).attempts == 1  # the lease holds against others

    retry = processing.parse_document(doc_id, token="task-a", **run)  # Celery's retry: same task id
    done = row(sessions, doc_id)
    assert retry.state == "embedding" and retry.chunks == done.chunks > 0
    assert (done.state, done.attempts, done.last_error) == ("embedding", 2, None)
    with sessions.begin() as s:
        assert not states.holds_claim(s, doc_id, 1)  # the interrupted attempt is fenced out


def test_a_released_document_is_claimed_again_by_the_retry(
    sessions, parser, faults, minilm_dir: Path, tmp_path: Path
) -> None:
    doc_id = queued(sessions, str(minilm_dir))
    faults("chunks", doc_id, 1)
    run = dict(sessions=sessions, parser=parser, settings=settings(tmp_path))
    with pytest.raises(DATABASE_LOST):
        processing.parse_document(doc_id, token="task-b", **run)
    released = row(sessions, doc_id)
    assert (released.state, released.attempts) == ("queued", 1)
    assert "AdminShutdown: injected fault on chunks" in released.last_error
    assert processing.parse_document(doc_id, token="task-b", **run).state == "embedding"
    assert row(sessions, doc_id).attempts == 2


def _pdf(pages: int) -> bytes:
    import pymupdf

    pdf = pymupdf.open()
    for n in range(1, pages + 1):
        pdf.new_page().insert_text((72, 72), f"Page {n} of the split document about leases and claims.")
    return pdf.tobytes()


def test_the_part_that_joins_a_split_pdf_resumes_after_a_database_error(
    sessions, parser, faults, minilm_dir: Path, tmp_path: Path
) -> None:
    cfg = Settings(data_dir=tmp_path, parse=ParseLimits(split_pages=2, timeout_s=60))
    doc_id = queued(sessions, str(minilm_dir), _pdf(6), "application/pdf")
    run = dict(sessions=sessions, parser=parser, settings=cfg)
    first = processing.parse_document(doc_id, token="parse-1", **run)
    assert first.state == "split" and first.parts == [1, 2]
    assert processing.parse_part(doc_id, 1, first.attempt, token="part-1", **run).state == "parsing"
    faults("chunks", doc_id, 1)
    with pytest.raises(DATABASE_LOST, match="injected fault on chunks"):
        processing.parse_part(doc_id, 2, first.attempt, token="part-2", **run)  # the last part: it joins
    stuck = row(sessions, doc_id)
    assert (stuck.state, stuck.attempts, stuck.claimed_by) == ("parsing", first.attempt, "part-2")

    assert processing.parse_part(doc_id, 1, first.attempt, token="part-1", **run).state == "skipped"
    retry = processing.parse_part(doc_id, 2, first.attempt, token="part-2", **run)
    done = row(sessions, doc_id)
    assert retry.state == "embedding" and (done.state, done.attempts) == ("embedding", first.attempt + 1)
    with sessions.begin() as s:
        pages = s.execute(
            text("SELECT min(page_start), max(page_end) FROM chunks WHERE document_id = :d"), {"d": doc_id}
        ).one()
    assert tuple(pages) == (1, 6)


def test_a_document_fails_after_exactly_max_attempts_whichever_path_retried_it(
    sessions, parser, faults, minilm_dir: Path, tmp_path: Path
) -> None:
    cfg = settings(tmp_path, max_attempts=2)
    run = dict(sessions=sessions, parser=parser, settings=cfg)
    # Celery's path: every try's COPY fails; the second try is the last
    by_retry = queued(sessions, str(minilm_dir))
    faults("chunks", by_retry, 100)
    with pytest.raises(DATABASE_LOST):
        processing.parse_document(by_retry, token="t", **run)
    last = processing.parse_document(by_retry, token="t", **run)
    failed = row(sessions, by_retry)
    assert last.state == "failed" and (failed.state, failed.attempts) == ("failed", 2)
    assert failed.last_error.startswith("gave up after 2 attempts; last error: AdminShutdown: injected fault")
    assert processing.parse_document(by_retry, token="t", **run).state == "skipped"

    # the sweeper's path: two workers died holding it (leases expired)
    by_sweep = queued(sessions, str(minilm_dir))
    for _ in range(2):
        with sessions.begin() as s:
            assert store.claim_for_parse(s, by_sweep, lease_s=300, max_attempts=2) is not None
            s.execute(text("UPDATE documents SET lease_until = now() - interval '1 s' WHERE id = :d"), {"d": by_sweep})
    with sessions.begin() as s:
        assert store.claim_for_parse(s, by_sweep, lease_s=300, max_attempts=2) is None  # no third claim
    found = sweeper.find_stale_work(sessions=sessions, settings=cfg)
    swept = row(sessions, by_sweep)
    assert found.failed >= 1 and by_sweep not in found.parse
    assert (swept.state, swept.attempts) == ("failed", 2)
    assert swept.last_error == (
        "gave up after 2 attempts; last error: none recorded; "
        "the last attempt's worker died or timed out (lease expired)"
    )


def _embedding_doc(sessions, n_chunks: int) -> tuple[int, int, list[int]]:
    """A document in `embedding` with `n_chunks` queued chunks: (document id, model id, chunk ids)."""
    doc_id = queued(sessions, "test/model-4d", body=f"{next(_names)}".encode(), dim=4)
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, doc_id, lease_s=60)
        chunks = [Chunk(i, f"chunk {i}", 3, 1, 1, ()) for i in range(n_chunks)]
        assert store.save_chunks(s, claim, chunks, page_count=1) == "embedding"
        ids = s.execute(text("SELECT id FROM chunks WHERE document_id = :d ORDER BY id"), {"d": doc_id}).scalars()
        return doc_id, claim.model_id, list(ids)


def _blocked_on_advisory_lock(sessions, pid: int) -> bool:
    with sessions.begin() as s:
        return bool(
            s.execute(text("SELECT wait_event = 'advisory' FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar()
        )


def _wait(predicate, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("writer", ["queue rows", "write_embeddings"])
def test_two_writers_of_the_last_chunks_mark_the_document_ready_exactly_once(sessions, writer: str) -> None:
    doc_id, model_id, (c1, c2) = _embedding_doc(sessions, 2)
    a, b = sessions(), sessions()
    try:
        b_pid = b.execute(text("SELECT pg_backend_pid()")).scalar_one()
        if writer == "queue rows":  # the worst order: both queue rows gone (uncommitted) before either checks
            a.execute(text("DELETE FROM embedding_queue WHERE chunk_id = :c"), {"c": c1})
            b.execute(text("DELETE FROM embedding_queue WHERE chunk_id = :c"), {"c": c2})
            a_marked = states.mark_ready(a, [doc_id])  # sees B's row still queued: not ready yet
        else:
            a_marked = store.write_embeddings(a, model_id, [c1], np.ones((1, 4), dtype=np.float32))
        b_marked: list[int] = []

        def second_writer() -> None:
            if writer == "queue rows":
                b_marked.append(states.mark_ready(b, [doc_id]))
            else:
                b_marked.append(store.write_embeddings(b, model_id, [c2], np.ones((1, 4), dtype=np.float32)))
            b.commit()

        thread = threading.Thread(target=second_writer)
        thread.start()
        _wait(  # without the lock it would not wait, and would find the first writer's chunk still queued
            lambda: _blocked_on_advisory_lock(sessions, b_pid) or not thread.is_alive(), "the second writer"
        )
        a.commit()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        a.close()
        b.close()
    assert (a_marked, b_marked) == (0, [1])  # exactly one marks it; without the lock: (0, [0]), a hung Job.wait
    with sessions.begin() as s:
        assert s.execute(text("SELECT state FROM documents WHERE id = :d"), {"d": doc_id}).scalar_one() == "ready"


def test_the_sweeper_and_the_embed_writer_write_the_same_ready(sessions) -> None:
    by_writer, model_id, [c1] = _embedding_doc(sessions, 1)
    by_sweeper, _, [c2] = _embedding_doc(sessions, 1)
    with sessions.begin() as s:  # both documents had a reason on an earlier attempt
        s.execute(
            text("UPDATE documents SET last_error = 'OperationalError on attempt 1' WHERE id = ANY(:d)"),
            {"d": [by_writer, by_sweeper]},
        )
    with sessions.begin() as s:
        assert store.write_embeddings(s, model_id, [c1], np.ones((1, 4), dtype=np.float32)) == 1
    with sessions.begin() as s:  # a batch that died after writing its vectors, before marking its documents
        s.execute(text("DELETE FROM embedding_queue WHERE chunk_id = :c"), {"c": c2})
    sweeper.find_stale_work(sessions=sessions, settings=Settings())
    with sessions.begin() as s:
        rows = s.execute(
            text("SELECT state, last_error, lease_until FROM documents WHERE id = ANY(:d) ORDER BY id"),
            {"d": [by_writer, by_sweeper]},
        ).all()
    assert [tuple(r) for r in rows] == [("ready", None, None)] * 2


def test_the_lease_is_renewed_while_the_claim_is_held_and_only_then(sessions, tmp_path: Path) -> None:
    doc_id = queued(sessions, "test/model-4d", body=b"lease keeper", dim=4)
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, doc_id, lease_s=3)
    with LeaseKeeper(sessions, [(doc_id, claim.attempts)], lease_s=3) as keeper:
        _wait(lambda: keeper.renewals >= 2, "two renewals")
        assert row(sessions, doc_id).lease_left.total_seconds() > 1.5
    renewed = keeper.renewals
    with sessions.begin() as s:  # another attempt took over: a keeper of the old one renews nothing
        s.execute(text("UPDATE documents SET attempts = attempts + 1 WHERE id = :d"), {"d": doc_id})
    with LeaseKeeper(sessions, [(doc_id, claim.attempts)], lease_s=3) as stale:
        _wait(lambda: not stale._thread.is_alive(), "the stale keeper to stop")
    assert stale.renewals == 0 and keeper.renewals == renewed
