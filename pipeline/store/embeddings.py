"""The embed queue: claim pending chunks across documents, write their vectors, mark documents ready."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from docpipe import states
from docpipe.chunk_context import embedded_text
from docpipe.store.connection import raw_connection

FAIR_ROUND_CHUNKS = 64  # chunks of one document per claim round (embedding_queue.round; migration 0011)

__all__ = [
    "FAIR_ROUND_CHUNKS",
    "PendingChunk",
    "claim_pending_chunks",
    "mark_ready",
    "model_row",
    "release_chunks",
    "renew_chunk_leases",
    "write_embeddings",
]


@dataclass(frozen=True)
class PendingChunk:
    chunk_id: int
    document_id: int
    text: str
    token_count: int
    attempt: int = 0  # the row's `attempts` after this claim: fences renewals and releases of an older claim


def model_row(session: Session, name: str) -> tuple[int, int] | None:
    """(id, dim) of a registered model."""
    row = session.execute(text("SELECT id, dim FROM embedding_models WHERE name = :n"), {"n": name}).first()
    return (int(row.id), int(row.dim)) if row else None


def claim_pending_chunks(
    session: Session,
    model_id: int,
    *,
    max_tokens: int,
    lease_s: int,
    max_rows: int = 4096,
    max_attempts: int | None = None,
) -> list[PendingChunk]:
    """Lease pending chunks of one model across all documents, up to `max_tokens` tokens in total.

    Every claim counts in the row's `attempts`; rows that reached `max_attempts` are not claimed
    (`states.fail_embed_exhausted` fails their documents). A row claimed before and still here (its
    drain died or gave up on the batch) is a suspect: it is claimed alone, ahead of fresh rows, so a
    chunk that kills its worker does not take the same batch-mates down again.

    The queue is read in rounds (`round`: a chunk's ordinal // `FAIR_ROUND_CHUNKS`): every
    document's first 64 chunks come before any document's next 64, so a huge document queued first
    does not hold back the ones queued after it. The budget is filled round-robin over the
    documents among the first `max_rows` of them (each one's 1st chunk, then each one's 2nd, ...).
    """
    rows = session.execute(
        text(
            "WITH cand AS ("
            "  SELECT chunk_id, document_id, token_count, attempts FROM embedding_queue "
            "  WHERE model_id = :m AND (lease_until IS NULL OR lease_until < now()) "
            "  AND (CAST(:max AS int) IS NULL OR attempts < :max) "
            "  ORDER BY round, chunk_id LIMIT :rows FOR UPDATE SKIP LOCKED"
            "), fresh AS (SELECT * FROM cand WHERE attempts = 0"
            "), turns AS ("
            "  SELECT chunk_id, token_count, "
            "         row_number() OVER (PARTITION BY document_id ORDER BY chunk_id) AS turn FROM fresh"
            "), budget AS ("
            "  SELECT chunk_id, sum(greatest(token_count, 1)) OVER (ORDER BY turn, chunk_id) AS running FROM turns"
            "), picked AS ("
            "  SELECT min(chunk_id) AS chunk_id FROM cand WHERE attempts > 0 "  # a suspect, alone
            "  UNION ALL SELECT chunk_id FROM ("
            "    SELECT chunk_id FROM budget WHERE running <= :budget "
            "    UNION SELECT min(chunk_id) FROM fresh"  # at least one, even if it alone is over budget
            "  ) f WHERE NOT EXISTS (SELECT 1 FROM cand WHERE attempts > 0)"
            ") "
            "UPDATE embedding_queue q SET lease_until = now() + make_interval(secs => :lease), "
            "   attempts = q.attempts + 1 "
            "FROM picked p, chunks c "
            "WHERE q.model_id = :m AND q.chunk_id = p.chunk_id AND c.id = q.chunk_id "
            "RETURNING q.chunk_id, q.document_id, c.context, c.text, q.token_count, q.attempts"
        ),
        {"m": model_id, "rows": max_rows, "budget": max_tokens, "lease": lease_s, "max": max_attempts},
    ).all()
    return [
        PendingChunk(r.chunk_id, r.document_id, embedded_text(r.context, r.text), r.token_count, r.attempts)
        for r in rows
    ]


def _claims(chunks: Sequence[PendingChunk]) -> dict[str, list[int]]:
    return {"ids": [c.chunk_id for c in chunks], "att": [c.attempt for c in chunks]}


def renew_chunk_leases(session: Session, model_id: int, chunks: Sequence[PendingChunk], *, lease_s: float) -> int:
    """Extend these claims' leases to `lease_s` seconds from now (rows still under the same claim); how many."""
    if not chunks:
        return 0
    return session.execute(
        text(
            "UPDATE embedding_queue q SET lease_until = now() + make_interval(secs => :l) "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:att AS int[])) AS h(chunk_id, attempts) "
            "WHERE q.model_id = :m AND q.chunk_id = h.chunk_id AND q.attempts = h.attempts"
        ),
        {"m": model_id, "l": lease_s, **_claims(chunks)},
    ).rowcount


def release_chunks(session: Session, model_id: int, chunks: Sequence[PendingChunk]) -> int:
    """Give back claims never tried (a drain stopping early): claimable now, and the claim not counted."""
    if not chunks:
        return 0
    return session.execute(
        text(
            "UPDATE embedding_queue q SET lease_until = NULL, attempts = q.attempts - 1 "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:att AS int[])) AS h(chunk_id, attempts) "
            "WHERE q.model_id = :m AND q.chunk_id = h.chunk_id AND q.attempts = h.attempts"
        ),
        {"m": model_id, **_claims(chunks)},
    ).rowcount


def write_embeddings(session: Session, model_id: int, chunk_ids: Sequence[int], vectors: np.ndarray) -> int:
    """COPY vectors in (binary), drop their queue rows, mark finished documents ready.

    Returns the number of documents that became ready. A vector that already
    exists (a redelivered batch) is kept as it is.
    """
    from pgvector.psycopg import register_vector

    # Lock the documents' keys first (like delete and replace): a document deleted or replaced from here
    # on waits for this commit, one deleted before is skipped by the join below.
    documents = session.execute(
        text("SELECT DISTINCT document_id FROM chunks WHERE id = ANY(:ids)"), {"ids": list(chunk_ids)}
    ).scalars()
    states.lock_keys(session, list(documents))
    raw = raw_connection(session)
    register_vector(raw)
    session.execute(
        text("CREATE TEMP TABLE IF NOT EXISTS embedding_stage (chunk_id int8, embedding vector) ON COMMIT DELETE ROWS")
    )
    with (
        raw.cursor() as cur,
        cur.copy("COPY embedding_stage (chunk_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy,
    ):
        copy.set_types(["int8", "vector"])
        for cid, vec in zip(chunk_ids, vectors, strict=True):
            copy.write_row((cid, np.asarray(vec, dtype=np.float32)))
    session.execute(
        text(
            "INSERT INTO embeddings (chunk_id, model_id, embedding) "
            "SELECT s.chunk_id, :m, s.embedding FROM embedding_stage s "
            "JOIN chunks c ON c.id = s.chunk_id "  # the chunk may be gone (document re-parsed)
            "ON CONFLICT (chunk_id, model_id) DO NOTHING"
        ),
        {"m": model_id},
    )
    doc_ids = (
        session.execute(
            text("DELETE FROM embedding_queue WHERE model_id = :m AND chunk_id = ANY(:ids) RETURNING document_id"),
            {"m": model_id, "ids": list(chunk_ids)},
        )
        .scalars()
        .all()
    )
    return mark_ready(session, sorted(set(doc_ids)))


def mark_ready(session: Session, document_ids: Sequence[int]) -> int:
    """Documents in `embedding` with nothing left in the queue become `ready` (see `docpipe.states`)."""
    return states.mark_ready(session, document_ids)
