"""Document states and every transition between them: the one module that writes `documents.state`.

A document row is one version of a source key in a collection:

    queued → parsing → embedding → ready      (failed from parsing, embedding, or at ingest)
       ↑        │ lease expired / retryable
       └────────┘

Only `ready` versions are searchable. When a version becomes `ready`, the
same transaction deletes every older version of its key (`promote`), so a
search sees the old version or the new one, never both and never neither; a
version that fails leaves the live one in place. Versions are serialised per
key by a transaction-level advisory lock taken before any row lock.

Callers (store, sweeper, client, parse stage) own the session and the
transaction; every function here is one conditional statement (or a few
under one lock), so a late or duplicated worker write changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from docpipe.retry import RetryPolicy

__all__ = [
    "ACTIVE",
    "FINAL",
    "NO_TEXT_REASON",
    "DocState",
    "claim_for_parse",
    "embedded_to_ready",
    "fail_claimed",
    "fail_embed_exhausted",
    "fail_embedding",
    "fail_exhausted",
    "finish_parse",
    "hand_claim",
    "held_claims",
    "holds_claim",
    "initial_state",
    "lock_keys",
    "lock_source_keys",
    "mark_ready",
    "promote",
    "record_embed_error",
    "release_claimed",
    "renew_claims",
    "requeue_failed",
    "resume_join",
]


class DocState(StrEnum):
    """A document version's place in the pipeline."""

    QUEUED = "queued"  # stored, waiting for a parse worker
    PARSING = "parsing"  # claimed under a lease (`attempts` is the fencing token, `claimed_by` the task's)
    EMBEDDING = "embedding"  # chunks stored, vectors pending in `embedding_queue`
    READY = "ready"  # live: searchable (or no searchable text, see `NO_TEXT_REASON`)
    FAILED = "failed"  # gave up, with a reason the user sees in `last_error`


ACTIVE = (DocState.QUEUED, DocState.PARSING, DocState.EMBEDDING)  # a worker will move it on
FINAL = (DocState.READY, DocState.FAILED)  # no worker moves it on
NO_TEXT_REASON = "no text found (scanned, image-only or empty document)"  # a `ready` version without chunks
ADVISORY_NAMESPACE = 0x0D0C  # first key of pg_advisory_xact_lock(int, int): docpipe's source keys


def initial_state(failed_reason: str | None) -> DocState:
    """State a version is stored in: `failed` when it is refused at ingest (unsupported, empty, too large)."""
    return DocState.QUEUED if failed_reason is None else DocState.FAILED


def lock_keys(session: Session, document_ids: Sequence[int]) -> None:
    """Serialise version changes of these documents' keys until the transaction ends (hash order: no deadlock)."""
    if document_ids:
        session.execute(
            text(
                "SELECT pg_advisory_xact_lock(:ns, h) FROM ("
                "  SELECT DISTINCT hashtext(collection_id::text || '/' || source) AS h "
                "  FROM documents WHERE id = ANY(:ids) ORDER BY h) k"
            ),
            {"ns": ADVISORY_NAMESPACE, "ids": list(document_ids)},
        )


def lock_source_keys(session: Session, collection_id: int, sources: Sequence[str]) -> None:
    """`lock_keys` for keys that may have no row yet (ingest of a new version)."""
    if sources:
        session.execute(
            text(
                "SELECT pg_advisory_xact_lock(:ns, h) FROM ("
                "  SELECT DISTINCT hashtext(CAST(:c AS text) || '/' || s) AS h FROM unnest(CAST(:s AS text[])) s "
                "  ORDER BY h) k"
            ),
            {"ns": ADVISORY_NAMESPACE, "c": str(collection_id), "s": list(sources)},
        )


def promote(session: Session, document_ids: Sequence[int]) -> list[int]:
    """Delete every version older than the newest `ready` one of these documents' keys; the deleted ids.

    Call with the keys locked (`lock_keys`) in the transaction that made a version ready. Versions in a
    rechunk's shadow collection stay (`store.rechunk` pairs each with the live version it re-parses).
    """
    if not document_ids:
        return []
    return list(
        session.execute(
            text(
                "DELETE FROM documents o USING ("
                "  SELECT v.collection_id, v.source, max(v.id) AS live FROM documents v "
                "  JOIN documents d ON d.collection_id = v.collection_id AND d.source = v.source "
                "  JOIN collections c ON c.id = v.collection_id AND c.rechunk_of IS NULL "  # a rechunk keeps each twin
                "  WHERE d.id = ANY(:ids) AND v.state = :ready GROUP BY v.collection_id, v.source) n "
                "WHERE o.collection_id = n.collection_id AND o.source = n.source AND o.id < n.live "
                "RETURNING o.id"
            ),
            {"ids": list(document_ids), "ready": DocState.READY},
        ).scalars()
    )


def claim_for_parse(
    session: Session,
    document_ids: Sequence[int],
    *,
    lease_s: int,
    token: str | None = None,
    max_attempts: int | None = None,
) -> list[Any]:
    """queued, or parsing with an expired lease or under this `token` → parsing, attempts + 1; the rows claimed.

    `token` names the claimer (a task id, the same for every retry of one message): a retry takes its
    own claims back at once, as new attempts (older writes under the previous attempt are fenced
    out). No claim once `attempts` reached `max_attempts` (see `fail_exhausted`). Ids not claimed
    are not ours to parse; rows come back in id order (the order their locks were taken).
    """
    return list(
        session.execute(
            text(
                "UPDATE documents d SET state = :parsing, attempts = d.attempts + 1, claimed_by = :token, "
                "lease_until = now() + make_interval(secs => :lease), updated_at = now() "
                "FROM collections c, (SELECT id FROM documents WHERE id = ANY(:ids) ORDER BY id FOR UPDATE) k "
                "WHERE d.id = k.id AND c.id = d.collection_id AND (d.state = :queued "
                "   OR (d.state = :parsing AND (d.lease_until < now() OR d.claimed_by = :token))) "
                "AND (CAST(:max AS int) IS NULL OR d.attempts < :max) "
                "RETURNING d.id, d.collection_id, d.source, d.media_type, d.content, d.sha256, d.attempts, "
                "   c.model_id, (SELECT name FROM embedding_models WHERE id = c.model_id) AS model, c.chunking, "
                "   (SELECT name FROM embedding_models WHERE id = c.next_model_id) AS next_model"
            ),
            {
                "ids": list(document_ids),
                "lease": lease_s,
                "token": token,
                "max": max_attempts,
                "parsing": DocState.PARSING,
                "queued": DocState.QUEUED,
            },
        ).all()
    )


def renew_claims(session: Session, claims: Sequence[tuple[int, int]], *, lease_s: int) -> int:
    """Extend the leases of these (document id, attempt) claims to `lease_s` seconds from now; how many still hold."""
    result = session.execute(
        text(
            "UPDATE documents d SET lease_until = now() + make_interval(secs => :l) "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[])) AS k(id, attempt) "
            "WHERE d.id = k.id AND d.state = :parsing AND d.attempts = k.attempt"
        ),
        {"ids": [d for d, _ in claims], "attempts": [a for _, a in claims], "l": lease_s, "parsing": DocState.PARSING},
    )
    return int(result.rowcount)


def resume_join(
    session: Session, document_id: int, part: int, attempt: int, *, token: str, lease_s: int, max_attempts: int
) -> Any | None:
    """Take back a split document whose parts are all parsed, as a new attempt, for the part task `token`.

    For the retry of the part task that parsed the last part and then failed before the chunks were
    saved. The row (attempts, page_start, page_end of `part`), or None when that is not the situation
    (or no attempts are left: then `fail_exhausted` fails it).
    """
    return session.execute(
        text(
            "UPDATE documents d SET attempts = attempts + 1, lease_until = now() + make_interval(secs => :l), "
            "updated_at = now() FROM document_parts p "
            "WHERE d.id = :d AND d.state = :parsing AND d.attempts = :a AND d.claimed_by = :t AND d.attempts < :max "
            "AND p.document_id = d.id AND p.part = :p AND p.attempt = :a AND p.blocks IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM document_parts m WHERE m.document_id = d.id AND m.blocks IS NULL) "
            "RETURNING d.attempts, p.page_start, p.page_end"
        ),
        {
            "d": document_id,
            "p": part,
            "a": attempt,
            "t": token,
            "l": lease_s,
            "max": max_attempts,
            "parsing": DocState.PARSING,
        },
    ).first()


def hand_claim(session: Session, document_id: int, attempt: int, token: str | None) -> None:
    """Name `token` as the holder of claim `attempt` (the part task that joins a split document)."""
    session.execute(
        text("UPDATE documents SET claimed_by = :t WHERE id = :d AND state = :parsing AND attempts = :a"),
        {"d": document_id, "a": attempt, "t": token, "parsing": DocState.PARSING},
    )


def holds_claim(session: Session, document_id: int, attempt: int) -> bool:
    """Lock the row; True while claim `attempt` still holds it (False when superseded or deleted)."""
    return document_id in held_claims(session, [(document_id, attempt)])


def held_claims(session: Session, claims: Sequence[tuple[int, int]]) -> set[int]:
    """Lock these documents' rows (in id order); the ids whose (document id, attempt) claim still holds."""
    wanted = dict(claims)
    rows = session.execute(
        text("SELECT id, state, attempts FROM documents WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"),
        {"ids": list(wanted)},
    ).all()
    return {r.id for r in rows if r.state == DocState.PARSING and r.attempts == wanted[r.id]}


def finish_parse(
    session: Session, document_id: int, *, chunks: int, page_count: int, title: str | None, why_no_text: str = ""
) -> DocState:
    """parsing → embedding (chunks queued) or → ready without text (`NO_TEXT_REASON`, then `why_no_text`).

    The caller holds the claim and locked the key first (`lock_keys`, then `holds_claim`).
    """
    state = DocState.EMBEDDING if chunks else DocState.READY
    why = f"{NO_TEXT_REASON}: {why_no_text}"[:2000] if why_no_text else NO_TEXT_REASON
    session.execute(
        text(
            "UPDATE documents SET state = :s, page_count = :p, chunk_count = :n, lease_until = NULL, title = :t, "
            "last_error = CASE WHEN :n = 0 THEN CAST(:why AS text) END, updated_at = now() WHERE id = :d"
        ),
        {"s": state, "p": page_count, "n": chunks, "d": document_id, "t": title, "why": why},
    )
    if state is DocState.READY:
        promote(session, [document_id])
    return state


def _end_claim(session: Session, document_id: int, attempt: int, state: DocState, reason: str) -> bool:
    if not holds_claim(session, document_id, attempt):
        return False
    session.execute(
        text("UPDATE documents SET state = :s, last_error = :r, lease_until = NULL, updated_at = now() WHERE id = :d"),
        {"d": document_id, "s": state, "r": reason[:2000]},
    )
    session.execute(text("DELETE FROM document_parts WHERE document_id = :d"), {"d": document_id})
    return True


def fail_claimed(session: Session, document_id: int, attempt: int, reason: str) -> bool:
    """parsing → failed under claim `attempt`; `reason` is what the user sees. False: claim lost."""
    return _end_claim(session, document_id, attempt, DocState.FAILED, reason)


def release_claimed(session: Session, document_id: int, attempt: int, reason: str) -> bool:
    """parsing → queued after a transient error under claim `attempt`, keeping the reason. False: claim lost."""
    return _end_claim(session, document_id, attempt, DocState.QUEUED, reason)


def mark_ready(session: Session, document_ids: Sequence[int]) -> int:
    """embedding → ready for those with nothing left in the embed queue, replacing older versions; how many."""
    if not document_ids:
        return 0
    lock_keys(session, document_ids)
    ready = list(
        session.execute(
            text(
                "UPDATE documents d SET state = :ready, last_error = NULL, updated_at = now() "
                "WHERE d.id = ANY(:ids) AND d.state = :embedding "
                "AND NOT EXISTS (SELECT 1 FROM embedding_queue q WHERE q.document_id = d.id) RETURNING d.id"
            ),
            {"ids": list(document_ids), "ready": DocState.READY, "embedding": DocState.EMBEDDING},
        ).scalars()
    )
    promote(session, ready)
    return len(ready)


def embedded_to_ready(session: Session, *, limit: int = 10_000) -> int:
    """The sweeper's half of `mark_ready`: documents whose last vectors were written by a batch that died."""
    ids = session.execute(
        text(
            "SELECT d.id FROM documents d WHERE d.state = :embedding "
            "AND NOT EXISTS (SELECT 1 FROM embedding_queue q WHERE q.document_id = d.id) ORDER BY d.id LIMIT :l"
        ),
        {"embedding": DocState.EMBEDDING, "l": limit},
    ).scalars()
    return mark_ready(session, list(ids))


def _fail_embedding_documents(session: Session, reasons: dict[int, str]) -> dict[int, str]:
    """embedding → failed with these reasons; their chunks go (queue rows and vectors with them), like a
    document that failed its parse, so no reindex or rechunk switch waits for them. Keys locked first."""
    if not reasons:
        return {}
    lock_keys(session, list(reasons))
    failed = list(
        session.execute(
            text(
                "UPDATE documents d SET state = :failed, last_error = r.reason, lease_until = NULL, "
                "updated_at = now() FROM unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[])) AS r(id, reason) "
                "WHERE d.id = r.id AND d.state = :embedding RETURNING d.id"
            ),
            {
                "ids": list(reasons),
                "reasons": [r[:2000] for r in reasons.values()],
                "failed": DocState.FAILED,
                "embedding": DocState.EMBEDDING,
            },
        ).scalars()
    )
    if failed:
        session.execute(text("DELETE FROM chunks WHERE document_id = ANY(:ids)"), {"ids": failed})
    return {d: reasons[d][:2000] for d in failed}


def fail_embedding(session: Session, errors: dict[int, str]) -> dict[int, str]:
    """Documents in `embedding` with a chunk the model fails on (chunk id → error text) → failed; id → reason.

    The reason names the error and the chunk (ordinal, pages). Chunks of documents in another state
    (a ready document queued for a reindex) stay queued: their leases expire and their attempts run out.
    """
    if not errors:
        return {}
    rows = session.execute(
        text(
            "SELECT c.id, c.document_id, c.ordinal, c.page_start, c.page_end FROM chunks c "
            "JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(:ids) AND d.state = :embedding "
            "ORDER BY c.document_id, c.ordinal"
        ),
        {"ids": list(errors), "embedding": DocState.EMBEDDING},
    ).all()
    found: dict[int, list[Any]] = {}
    for r in rows:
        found.setdefault(r.document_id, []).append(r)
    reasons = {}
    for doc, chunks in found.items():
        c = chunks[0]
        pages = f"page {c.page_start}" if c.page_start == c.page_end else f"pages {c.page_start}-{c.page_end}"
        more = f" (and {len(chunks) - 1} more of its chunks)" if len(chunks) > 1 else ""
        reasons[doc] = f"embedding failed on chunk {c.ordinal} ({pages}){more}: {errors[c.id]}"
    return _fail_embedding_documents(session, reasons)


def fail_embed_exhausted(
    session: Session, *, max_attempts: int, model_id: int | None = None, limit: int = 10_000
) -> dict[int, str]:
    """Documents in `embedding` with an unleased queue row claimed `max_attempts` times → failed
    (`RetryPolicy.gave_up`, with the last error a drain recorded); id → reason."""
    rows = session.execute(
        text(
            "SELECT d.id, max(q.attempts) AS attempts, d.last_error FROM embedding_queue q "
            "JOIN documents d ON d.id = q.document_id "
            "WHERE q.attempts >= :max AND (q.lease_until IS NULL OR q.lease_until < now()) "
            "AND (CAST(:m AS int) IS NULL OR q.model_id = :m) AND d.state = :embedding "
            "GROUP BY d.id, d.last_error ORDER BY d.id LIMIT :limit"
        ),
        {"max": max_attempts, "m": model_id, "limit": limit, "embedding": DocState.EMBEDDING},
    ).all()
    reasons = {r.id: RetryPolicy.gave_up(r.attempts, r.last_error, lease_expired=r.last_error is None) for r in rows}
    return _fail_embedding_documents(session, reasons)


def record_embed_error(session: Session, document_ids: Sequence[int], error: str) -> None:
    """Remember a transient embedding error on documents still in `embedding` (the reason if they give up)."""
    if document_ids:
        lock_keys(session, document_ids)
        session.execute(
            text("UPDATE documents SET last_error = :e WHERE id = ANY(:ids) AND state = :embedding"),
            {"ids": list(document_ids), "e": error[:2000], "embedding": DocState.EMBEDDING},
        )


def fail_exhausted(
    session: Session,
    *,
    max_attempts: int,
    document_ids: Sequence[int] | None = None,
    token: str | None = None,
    limit: int = 10_000,
) -> dict[int, str]:
    """Claimable documents that used up their attempts → failed (`RetryPolicy.gave_up`); id → reason.

    Claimable: queued, parsing with an expired lease, or parsing under `token` (a retry that would
    resume its own claim). Without `document_ids`: every such document (the sweeper's pass).
    """
    rows = session.execute(
        text(
            "SELECT id, attempts, last_error, state = :parsing AND lease_until < now() AS expired FROM documents "
            "WHERE attempts >= :max AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(:ids)) AND (state = :queued "
            "  OR (state = :parsing AND (lease_until < now() OR claimed_by = :token))) "
            "ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
        ),
        {
            "max": max_attempts,
            "ids": None if document_ids is None else list(document_ids),
            "token": token,
            "limit": limit,
            "parsing": DocState.PARSING,
            "queued": DocState.QUEUED,
        },
    ).all()
    reasons = {r.id: RetryPolicy.gave_up(r.attempts, r.last_error, lease_expired=r.expired)[:2000] for r in rows}
    if reasons:
        session.execute(
            text(
                "UPDATE documents d SET state = :failed, last_error = r.reason, lease_until = NULL, "
                "updated_at = now() FROM unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[])) AS r(id, reason) "
                "WHERE d.id = r.id"
            ),
            {"ids": list(reasons), "reasons": list(reasons.values()), "failed": DocState.FAILED},
        )
        session.execute(text("DELETE FROM document_parts WHERE document_id = ANY(:ids)"), {"ids": list(reasons)})
    return reasons


def requeue_failed(session: Session, *, collection: str | None, ids: Sequence[int] | None) -> list[int]:
    """failed → queued, fresh attempt count, no reason (documents refused at ingest keep no bytes: they stay)."""
    return list(
        session.execute(
            text(
                "UPDATE documents d SET state = :queued, attempts = 0, lease_until = NULL, last_error = NULL, "
                "updated_at = now() FROM collections c WHERE c.id = d.collection_id "
                "AND d.state = :failed AND octet_length(d.content) > 0 "
                "AND (CAST(:c AS text) IS NULL OR c.name = :c) "
                "AND (CAST(:ids AS bigint[]) IS NULL OR d.id = ANY(:ids)) RETURNING d.id"
            ),
            {
                "c": collection,
                "ids": list(ids) if ids is not None else None,
                "queued": DocState.QUEUED,
                "failed": DocState.FAILED,
            },
        ).scalars()
    )
