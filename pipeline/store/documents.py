"""Documents: insert on ingest, claim for parsing, save their chunks, end a claim."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from docpipe import states
from docpipe.store.connection import raw_connection
from docpipe.store.embeddings import FAIR_ROUND_CHUNKS
from docpipe.types import Chunk

__all__ = [
    "ClaimedDocument",
    "NewDocument",
    "ParsedChunks",
    "claim_documents",
    "claim_for_parse",
    "document_content",
    "existing_documents",
    "fail_document",
    "insert_documents",
    "parse_sizes",
    "release_for_retry",
    "save_chunks",
    "save_parsed",
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


def existing_documents(
    session: Session, collection_id: int, keys: Sequence[tuple[str, bytes]]
) -> dict[tuple[str, bytes], int]:
    """(key, sha256) → id of the versions among `keys` already in the collection."""
    rows = session.execute(
        text(
            "SELECT d.source, d.sha256, d.id FROM documents d "
            "JOIN unnest(CAST(:sources AS text[]), CAST(:shas AS bytea[])) AS k(source, sha256) "
            "  ON d.source = k.source AND d.sha256 = k.sha256 WHERE d.collection_id = :c"
        ),
        {"c": collection_id, "sources": [k for k, _ in keys], "shas": [sha for _, sha in keys]},
    ).all()
    return {(r.source, bytes(r.sha256)): int(r.id) for r in rows}


def _drop_newer_versions(session: Session, collection_id: int, known: dict[tuple[str, bytes], int]) -> None:
    """Bytes ingested again under their key after an edit: the newer, not yet live versions are stale."""
    if not known:
        return
    reverted = list(
        session.execute(
            text(
                "SELECT k.id FROM documents k WHERE k.id = ANY(:ids) AND EXISTS ("
                "  SELECT 1 FROM documents n WHERE n.collection_id = :c AND n.source = k.source AND n.id > k.id)"
            ),
            {"c": collection_id, "ids": list(known.values())},
        ).scalars()
    )
    if reverted:
        states.lock_keys(session, reverted)
        session.execute(
            text(
                "DELETE FROM documents n USING documents k WHERE k.id = ANY(:ids) "
                "AND n.collection_id = k.collection_id AND n.source = k.source AND n.id > k.id"
            ),
            {"ids": reverted},
        )


def insert_documents(session: Session, collection_id: int, docs: Sequence[NewDocument]) -> list[tuple[int, bool]]:
    """Store the versions not yet in the collection; returns (id, created) per input.

    A document is identified by its key (`source`): the same bytes under the
    same key keep their row (created False), and only new content crosses the
    wire. Changed bytes under a known key are a new version, live (and the
    old one gone) once it is ready: see `docpipe.states`. A new version
    inherits the metadata of the key's newest one, with `metadata` merged over it.
    """
    if not docs:
        return []
    wanted = [(d.source, d.sha256) for d in docs]
    known = existing_documents(session, collection_id, wanted)
    _drop_newer_versions(session, collection_id, known)
    new: dict[tuple[str, bytes], NewDocument] = {}
    for doc in docs:
        if (doc.source, doc.sha256) not in known:
            new.setdefault((doc.source, doc.sha256), doc)
    created: set[tuple[str, bytes]] = set()
    if new:
        inserted = session.execute(
            text(
                "INSERT INTO documents (collection_id, source, sha256, media_type, size_bytes, content, metadata, "
                "  state, last_error) "
                "SELECT :c, source, sha256, media_type, size_bytes, content, "
                "  coalesce((SELECT p.metadata FROM documents p WHERE p.collection_id = :c AND p.source = t.source "
                "            ORDER BY p.id DESC LIMIT 1), '{}') || CAST(metadata AS jsonb), "  # a new version inherits
                "  CASE WHEN err IS NULL THEN :queued ELSE :failed END, err "
                "FROM unnest(CAST(:sources AS text[]), CAST(:shas AS bytea[]), CAST(:types AS text[]), "
                "  CAST(:sizes AS int8[]), CAST(:contents AS bytea[]), CAST(:metas AS text[]), CAST(:errs AS text[])) "
                "  AS t(source, sha256, media_type, size_bytes, content, metadata, err) "
                "ON CONFLICT (collection_id, source, sha256) DO NOTHING RETURNING source, sha256, id"
            ),
            {
                "c": collection_id,
                "sources": [d.source for d in new.values()],
                "shas": [d.sha256 for d in new.values()],
                "types": [d.media_type for d in new.values()],
                "sizes": [d.size_bytes for d in new.values()],
                "contents": [d.content for d in new.values()],
                "metas": [json.dumps(d.metadata) for d in new.values()],
                "errs": [d.failed_reason for d in new.values()],
                "queued": states.initial_state(None),
                "failed": states.initial_state("refused"),
            },
        ).all()
        for row in inserted:
            key = (row.source, bytes(row.sha256))
            known[key] = int(row.id)
            created.add(key)
        if lost := [key for key in new if key not in known]:  # a concurrent ingest stored them first
            known.update(existing_documents(session, collection_id, lost))
    out: list[tuple[int, bool]] = []
    for key in wanted:
        out.append((known[key], key in created))
        created.discard(key)  # a second copy in `docs` is not new
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
    chunking: dict | None = None  # the collection's recorded chunker settings
    next_model: str | None = None  # the model a reindex is moving the collection to (its chunks are queued for both)
    sha256: bytes = b""  # of `content`, which may be left empty (a page range reads it on demand: `document_content`)

    @property
    def content_key(self) -> str:
        """Names these bytes for the parse sandbox, which holds a split document's bytes between its ranges."""
        return f"{self.id}:{self.sha256.hex()}"


def claim_documents(
    session: Session,
    document_ids: Sequence[int],
    *,
    lease_s: int,
    token: str | None = None,
    max_attempts: int | None = None,
) -> list[ClaimedDocument]:
    """Move the queued (or lease-expired, or `token`'s own) documents among `document_ids` to `parsing`;
    the ones claimed, in id order (the others are not ours to parse)."""
    rows = states.claim_for_parse(session, document_ids, lease_s=lease_s, token=token, max_attempts=max_attempts)
    return [_claimed(row) for row in rows]


def _claimed(row: Any) -> ClaimedDocument:
    return ClaimedDocument(
        row.id, row.collection_id, row.source, row.media_type, bytes(row.content), row.attempts, row.model_id,
        row.model, row.chunking, row.next_model, bytes(row.sha256),
    )  # fmt: skip


def claim_for_parse(
    session: Session, document_id: int, *, lease_s: int, token: str | None = None, max_attempts: int | None = None
) -> ClaimedDocument | None:
    """`claim_documents` for one document; None when it is not ours to parse."""
    found = claim_documents(session, [document_id], lease_s=lease_s, token=token, max_attempts=max_attempts)
    return found[0] if found else None


def parse_sizes(session: Session, document_ids: Sequence[int]) -> list[tuple[int, int, str]]:
    """(id, size in bytes, media type) of these documents, in the order given (gone ones left out)."""
    rows = session.execute(
        text(
            "SELECT d.id, d.size_bytes, d.media_type FROM unnest(CAST(:ids AS bigint[])) WITH ORDINALITY AS k(id, n) "
            "JOIN documents d ON d.id = k.id ORDER BY k.n"
        ),
        {"ids": list(document_ids)},
    ).all()
    return [(int(r.id), int(r.size_bytes), r.media_type) for r in rows]


def document_content(session: Session, document_id: int) -> bytes:
    """A document's stored bytes (empty when it is gone)."""
    row = session.execute(text("SELECT content FROM documents WHERE id = :d"), {"d": document_id}).first()
    return bytes(row.content) if row else b""


def still_claimed(session: Session, doc: ClaimedDocument) -> bool:
    """Lock the document row; True while this claim (its attempt number is the fencing token) holds it."""
    return states.holds_claim(session, doc.id, doc.attempts)


@dataclass(frozen=True)
class ParsedChunks:
    """One claimed document's chunks and what its parse said, ready to store."""

    doc: ClaimedDocument
    chunks: Sequence[Chunk]
    page_count: int
    title: str | None = None
    why_no_text: str = ""  # what the parser said (e.g. OCR found nothing), kept in the reason when there are no chunks


def save_chunks(
    session: Session,
    doc: ClaimedDocument,
    chunks: Sequence[Chunk],
    *,
    page_count: int,
    title: str | None = None,
    why_no_text: str = "",
) -> str | None:
    """`save_parsed` for one document: its new state, or None when the claim was lost."""
    return save_parsed(session, [ParsedChunks(doc, chunks, page_count, title, why_no_text)])[doc.id]


def save_parsed(session: Session, parsed: Sequence[ParsedChunks]) -> dict[int, str | None]:
    """Replace each document's chunks and queue them for embedding; document id → new state.

    One COPY (and one run of the BM25 trigger) for all of them. None for a document whose claim was
    lost (lease expired and another worker took over, or it was deleted or replaced): nothing of it
    is written.
    """
    by_id = {p.doc.id: p for p in parsed}
    states.lock_keys(session, list(by_id))  # before the row locks, like every version change of a key
    held = states.held_claims(session, [(p.doc.id, p.doc.attempts) for p in parsed])
    out: dict[int, str | None] = {doc_id: None for doc_id in by_id}
    if not held:
        return out
    ids = sorted(held)
    session.execute(text("DELETE FROM chunks WHERE document_id = ANY(:ids)"), {"ids": ids})
    session.execute(text("DELETE FROM document_parts WHERE document_id = ANY(:ids)"), {"ids": ids})
    with_chunks = [by_id[d] for d in ids if by_id[d].chunks]
    if with_chunks:
        _copy_chunks(session, with_chunks)
        session.execute(  # for each collection's model, and the one a reindex is moving it to
            text(
                "INSERT INTO embedding_queue (chunk_id, model_id, document_id, token_count, round) "
                "SELECT ch.id, m.id, ch.document_id, ch.token_count, ch.ordinal / :q FROM chunks ch "
                "JOIN documents d ON d.id = ch.document_id JOIN collections c ON c.id = d.collection_id, "
                "LATERAL (VALUES (c.model_id), (c.next_model_id)) AS m(id) "
                "WHERE ch.document_id = ANY(:ids) AND m.id IS NOT NULL ON CONFLICT DO NOTHING"
            ),
            {"ids": [p.doc.id for p in with_chunks], "q": FAIR_ROUND_CHUNKS},
        )
    for doc_id in ids:
        p = by_id[doc_id]
        out[doc_id] = states.finish_parse(
            session, doc_id, chunks=len(p.chunks), page_count=p.page_count, title=p.title, why_no_text=p.why_no_text
        )
    return out


def _copy_chunks(session: Session, parsed: Sequence[ParsedChunks]) -> None:
    with (
        raw_connection(session).cursor() as cur,
        cur.copy(
            "COPY chunks (document_id, ordinal, text, context, token_count, page_start, page_end, heading_path, "
            "ocr_confidence) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["int8", "int4", "text", "text", "int4", "int4", "int4", "text[]", "float4"])
        for p in parsed:
            for c in p.chunks:
                copy.write_row(
                    (
                        p.doc.id,
                        c.ordinal,
                        c.text,
                        c.context,
                        c.token_count,
                        c.page_start,
                        c.page_end,
                        list(c.heading_path),
                        c.ocr_confidence,
                    )
                )


def fail_document(session: Session, doc: ClaimedDocument, reason: str) -> None:
    """Fail a document this claim still holds; `reason` is what the user sees."""
    states.fail_claimed(session, doc.id, doc.attempts, reason)


def release_for_retry(session: Session, doc: ClaimedDocument, reason: str) -> None:
    """Put a document this claim holds back to `queued` after a transient error, keeping the reason."""
    states.release_claimed(session, doc.id, doc.attempts, reason)
