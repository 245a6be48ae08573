"""Documents: insert on ingest, claim for parsing, save their chunks, end a claim."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from docpipe.store.connection import raw_connection
from docpipe.types import Chunk

__all__ = [
    "ClaimedDocument",
    "NewDocument",
    "claim_for_parse",
    "existing_documents",
    "fail_document",
    "insert_documents",
    "release_for_retry",
    "save_chunks",
    "state_counts",
    "still_claimed",
]


@dataclass(frozen=True)
class NewDocument:
    source: str
    sha256: bytes
    media_type: str
    content: bytes
    size_bytes: int
    metadata: dict[str, Any]
    failed_reason: str | None = None  # stored straight as `failed` (unsupported, empty, too large)


def existing_documents(session: Session, collection_id: int, shas: Sequence[bytes]) -> dict[bytes, int]:
    """sha256 → id of the documents among `shas` already in the collection."""
    rows = session.execute(
        text("SELECT sha256, id FROM documents WHERE collection_id = :c AND sha256 = ANY(:shas)"),
        {"c": collection_id, "shas": list(shas)},
    ).all()
    return {bytes(r.sha256): int(r.id) for r in rows}


def insert_documents(session: Session, collection_id: int, docs: Sequence[NewDocument]) -> list[tuple[int, bool]]:
    """Insert the documents not yet in the collection; returns (id, created) per input.

    Bytes already stored keep their row (created False), and so does a second
    copy of the same bytes within `docs`; only new content crosses the wire.
    """
    if not docs:
        return []
    known = existing_documents(session, collection_id, [d.sha256 for d in docs])
    new: dict[bytes, NewDocument] = {}
    for doc in docs:
        if doc.sha256 not in known:
            new.setdefault(doc.sha256, doc)
    created: set[bytes] = set()
    if new:
        inserted = session.execute(
            text(
                "INSERT INTO documents (collection_id, source, sha256, media_type, size_bytes, content, metadata, "
                "  state, last_error) "
                "SELECT :c, source, sha256, media_type, size_bytes, content, CAST(metadata AS jsonb), "
                "  CASE WHEN err IS NULL THEN 'queued' ELSE 'failed' END, err "
                "FROM unnest(CAST(:sources AS text[]), CAST(:shas AS bytea[]), CAST(:types AS text[]), "
                "  CAST(:sizes AS int8[]), CAST(:contents AS bytea[]), CAST(:metas AS text[]), CAST(:errs AS text[])) "
                "  AS t(source, sha256, media_type, size_bytes, content, metadata, err) "
                "ON CONFLICT (collection_id, sha256) DO NOTHING RETURNING sha256, id"
            ),
            {
                "c": collection_id,
                "sources": [d.source for d in new.values()],
                "shas": list(new),
                "types": [d.media_type for d in new.values()],
                "sizes": [d.size_bytes for d in new.values()],
                "contents": [d.content for d in new.values()],
                "metas": [json.dumps(d.metadata) for d in new.values()],
                "errs": [d.failed_reason for d in new.values()],
            },
        ).all()
        for row in inserted:
            known[bytes(row.sha256)] = int(row.id)
            created.add(bytes(row.sha256))
        if lost := [sha for sha in new if sha not in known]:  # a concurrent ingest stored them first
            known.update(existing_documents(session, collection_id, lost))
    out: list[tuple[int, bool]] = []
    for doc in docs:
        out.append((known[doc.sha256], doc.sha256 in created))
        created.discard(doc.sha256)  # a second copy in `docs` is not new
    return out


@dataclass(frozen=True)
class ClaimedDocument:
    id: int
    collection_id: int
    source: str
    media_type: str
    content: bytes
    attempts: int
    model_id: int
    model: str


def claim_for_parse(session: Session, document_id: int, *, lease_s: int) -> ClaimedDocument | None:
    """Move a queued (or lease-expired parsing) document to `parsing`; None when not ours to parse."""
    row = session.execute(
        text(
            "UPDATE documents d SET state = 'parsing', attempts = attempts + 1, "
            "lease_until = now() + make_interval(secs => :lease), updated_at = now() "
            "FROM collections c "
            "WHERE d.id = :id AND c.id = d.collection_id AND (d.state = 'queued' "
            "   OR (d.state = 'parsing' AND d.lease_until < now())) "
            "RETURNING d.id, d.collection_id, d.source, d.media_type, d.content, d.attempts, "
            "   c.model_id, (SELECT name FROM embedding_models WHERE id = c.model_id) AS model"
        ),
        {"id": document_id, "lease": lease_s},
    ).first()
    if row is None:
        return None
    return ClaimedDocument(
        row.id, row.collection_id, row.source, row.media_type, bytes(row.content), row.attempts, row.model_id, row.model
    )


def still_claimed(session: Session, doc: ClaimedDocument) -> bool:
    """Lock the document row; True while this claim (its attempt number is the fencing token) holds it."""
    row = session.execute(text("SELECT state, attempts FROM documents WHERE id = :d FOR UPDATE"), {"d": doc.id}).first()
    return row is not None and row.state == "parsing" and row.attempts == doc.attempts


def save_chunks(
    session: Session, doc: ClaimedDocument, chunks: Sequence[Chunk], *, page_count: int, title: str | None = None
) -> str | None:
    """Replace the document's chunks and queue them for embedding; returns the new state.

    None when the claim was lost (lease expired and another worker took over):
    nothing is written, the newer claim wins.
    """
    if not still_claimed(session, doc):
        return None
    session.execute(text("DELETE FROM chunks WHERE document_id = :d"), {"d": doc.id})
    session.execute(text("DELETE FROM document_parts WHERE document_id = :d"), {"d": doc.id})
    if chunks:
        with (
            raw_connection(session).cursor() as cur,
            cur.copy(
                "COPY chunks (document_id, ordinal, text, context, token_count, page_start, page_end, heading_path) "
                "FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["int8", "int4", "text", "text", "int4", "int4", "int4", "text[]"])
            for c in chunks:
                copy.write_row(
                    (
                        doc.id,
                        c.ordinal,
                        c.text,
                        c.context,
                        c.token_count,
                        c.page_start,
                        c.page_end,
                        list(c.heading_path),
                    )
                )
        session.execute(
            text(
                "INSERT INTO embedding_queue (chunk_id, model_id, document_id, token_count) "
                "SELECT id, :m, document_id, token_count FROM chunks WHERE document_id = :d "
                "ON CONFLICT DO NOTHING"
            ),
            {"m": doc.model_id, "d": doc.id},
        )
    state = "embedding" if chunks else "ready"
    session.execute(
        text(
            "UPDATE documents SET state = :s, page_count = :p, chunk_count = :n, lease_until = NULL, title = :t, "
            "last_error = CASE WHEN :n = 0 THEN 'no text found (scanned, image-only or empty document)' END, "
            "updated_at = now() WHERE id = :d"
        ),
        {"s": state, "p": page_count, "n": len(chunks), "d": doc.id, "t": title},
    )
    return state


def _end_claim(session: Session, doc: ClaimedDocument, state: str, reason: str) -> None:
    """Move a document this claim still holds to `state` with `reason`; drop its page-range parts."""
    if still_claimed(session, doc):
        session.execute(
            text(
                "UPDATE documents SET state = :s, last_error = :r, lease_until = NULL, updated_at = now() WHERE id = :d"
            ),
            {"d": doc.id, "s": state, "r": reason[:2000]},
        )
        session.execute(text("DELETE FROM document_parts WHERE document_id = :d"), {"d": doc.id})


def fail_document(session: Session, doc: ClaimedDocument, reason: str) -> None:
    """Fail a document this claim still holds; `reason` is what the user sees."""
    _end_claim(session, doc, "failed", reason)


def release_for_retry(session: Session, doc: ClaimedDocument, reason: str) -> None:
    """Put a document this claim holds back to `queued` after a transient error, keeping the reason."""
    _end_claim(session, doc, "queued", reason)


def state_counts(session: Session, document_ids: Sequence[int]) -> dict[str, int]:
    rows = session.execute(
        text("SELECT state, count(*) FROM documents WHERE id = ANY(:ids) GROUP BY state"),
        {"ids": list(document_ids)},
    ).all()
    return {state: int(n) for state, n in rows}
