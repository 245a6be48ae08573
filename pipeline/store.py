"""Database operations of the pipeline. The caller owns the session and its transaction.

Every write here is idempotent under redelivery: claims are leases, inserts
conflict on unique keys, and a state only moves forward from the state the
caller claimed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from docpipe.errors import ConfigError
from docpipe.types import Block, Chunk

FINAL_STATES = ("ready", "failed")  # document states no worker moves on from


def _raw(session: Session):
    """The psycopg connection under the session, for COPY."""
    return session.connection().connection.driver_connection


# --- models and collections --------------------------------------------------


def ensure_model(session: Session, name: str, dim: int) -> int:
    """The id of embedding model `name`, registering it and its HNSW index on first use."""
    row = session.execute(text("SELECT id, dim FROM embedding_models WHERE name = :n"), {"n": name}).first()
    if row is not None:
        if row.dim != dim:
            raise ConfigError(f"model {name} is registered with {row.dim} dimensions, not {dim}")
        return int(row.id)
    model_id = session.execute(
        text(
            "INSERT INTO embedding_models (name, dim) VALUES (:n, :d) "
            "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id"
        ),
        {"n": name, "d": dim},
    ).scalar_one()
    create_hnsw_index(session, int(model_id), dim)
    return int(model_id)


def create_hnsw_index(session: Session, model_id: int, dim: int) -> None:
    """Partial HNSW cosine index for one model (identifiers are integers, never user text)."""
    session.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS embeddings_hnsw_m{int(model_id)} ON embeddings "
            f"USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops) "
            f"WHERE model_id = {int(model_id)}"
        )
    )


def defer_index_for_bulk_load(session: Session, model_id: int, *, min_pending: int) -> bool:
    """Drop the model's HNSW index when its pending chunks outnumber `min_pending` and what is indexed.

    Searches stay correct meanwhile (exact scans); `rebuild_deferred_index`
    builds the index once the queue is empty. True when this call dropped it.
    """
    if min_pending <= 0:
        return False
    pending = session.execute(
        text("SELECT count(*) FROM embedding_queue WHERE model_id = :m"), {"m": model_id}
    ).scalar_one()
    if pending < min_pending:
        return False
    indexed = session.execute(text("SELECT count(*) FROM embeddings WHERE model_id = :m"), {"m": model_id}).scalar_one()
    if pending <= indexed:
        return False
    won = session.execute(
        text("UPDATE embedding_models SET index_deferred = true WHERE id = :m AND NOT index_deferred RETURNING id"),
        {"m": model_id},
    ).first()
    if won:
        session.execute(text(f"DROP INDEX IF EXISTS embeddings_hnsw_m{int(model_id)}"))
    return won is not None


def rebuild_deferred_index(session: Session, model_id: int) -> bool:
    """Build a dropped index once nothing is pending for the model; True when this call built it."""
    row = session.execute(
        text("SELECT dim FROM embedding_models WHERE id = :m AND index_deferred FOR UPDATE SKIP LOCKED"),
        {"m": model_id},
    ).first()
    if row is None:
        return False
    pending = session.execute(
        text("SELECT count(*) FROM embedding_queue WHERE model_id = :m"), {"m": model_id}
    ).scalar_one()
    if pending:
        return False
    session.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
    create_hnsw_index(session, model_id, int(row.dim))
    session.execute(text("UPDATE embedding_models SET index_deferred = false WHERE id = :m"), {"m": model_id})
    return True


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    model_id: int
    model: str
    dim: int


def get_collection(session: Session, name: str) -> CollectionInfo | None:
    row = session.execute(
        text(
            "SELECT c.id, c.name, c.model_id, m.name AS model, m.dim FROM collections c "
            "JOIN embedding_models m ON m.id = c.model_id WHERE c.name = :n"
        ),
        {"n": name},
    ).first()
    return CollectionInfo(row.id, row.name, row.model_id, row.model, row.dim) if row else None


def ensure_collection(session: Session, name: str, *, model: str, dim: int) -> CollectionInfo:
    """Collection `name`, created bound to `model` when it does not exist yet."""
    if (found := get_collection(session, name)) is not None:
        return found
    model_id = ensure_model(session, model, dim)
    session.execute(
        text("INSERT INTO collections (name, model_id) VALUES (:n, :m) ON CONFLICT (name) DO NOTHING"),
        {"n": name, "m": model_id},
    )
    found = get_collection(session, name)
    assert found is not None
    return found


# --- documents -----------------------------------------------------------------


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


def save_chunks(session: Session, doc: ClaimedDocument, chunks: Sequence[Chunk], *, page_count: int) -> str | None:
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
            _raw(session).cursor() as cur,
            cur.copy(
                "COPY chunks (document_id, ordinal, text, token_count, page_start, page_end, heading_path) "
                "FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["int8", "int4", "text", "int4", "int4", "int4", "text[]"])
            for c in chunks:
                copy.write_row(
                    (doc.id, c.ordinal, c.text, c.token_count, c.page_start, c.page_end, list(c.heading_path))
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
            "UPDATE documents SET state = :s, page_count = :p, chunk_count = :n, lease_until = NULL, "
            "last_error = CASE WHEN :n = 0 THEN 'no text found (scanned, image-only or empty document)' END, "
            "updated_at = now() WHERE id = :d"
        ),
        {"s": state, "p": page_count, "n": len(chunks), "d": doc.id},
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


# --- long PDFs split into page ranges ----------------------------------------------


def _blocks_json(blocks: Sequence[Block]) -> list[list]:
    return [[b.text, b.page, list(b.heading_path), b.is_heading] for b in blocks]


def split_into_parts(
    session: Session,
    doc: ClaimedDocument,
    first: Sequence[Block],
    ranges: Sequence[tuple[int, int]],
    *,
    page_count: int,
    lease_s: int,
) -> bool:
    """Record a claimed document's page ranges; part 0 (already parsed) keeps `first`. False: claim lost."""
    if not still_claimed(session, doc):
        return False
    session.execute(text("DELETE FROM document_parts WHERE document_id = :d"), {"d": doc.id})
    insert = text(
        "INSERT INTO document_parts (document_id, part, attempt, page_start, page_end, blocks) "
        "VALUES (:d, :p, :a, :s, :e, :b)"
    ).bindparams(bindparam("b", type_=JSONB(none_as_null=True)))
    session.execute(
        insert, {"d": doc.id, "p": 0, "a": doc.attempts, "s": 1, "e": ranges[0][0] - 1, "b": _blocks_json(first)}
    )
    for part, (start, end) in enumerate(ranges, start=1):
        session.execute(insert, {"d": doc.id, "p": part, "a": doc.attempts, "s": start, "e": end, "b": None})
    renew_lease(session, doc.id, lease_s, page_count=page_count)
    return True


def renew_lease(session: Session, document_id: int, lease_s: int, *, page_count: int | None = None) -> None:
    session.execute(
        text(
            "UPDATE documents SET lease_until = now() + make_interval(secs => :l), updated_at = now(), "
            "page_count = coalesce(:p, page_count) WHERE id = :d"
        ),
        {"d": document_id, "l": lease_s, "p": page_count},
    )


@dataclass(frozen=True)
class PartToParse:
    claim: ClaimedDocument
    page_start: int
    page_end: int


def load_claim(session: Session, document_id: int, attempt: int, *, with_content: bool) -> ClaimedDocument | None:
    """The claim `attempt` on a document still being parsed, as `claim_for_parse` returned it."""
    row = session.execute(
        text(
            "SELECT d.id, d.collection_id, d.source, d.media_type, "
            "  CASE WHEN :content THEN d.content ELSE ''::bytea END AS content, d.attempts, c.model_id, m.name "
            "FROM documents d JOIN collections c ON c.id = d.collection_id "
            "JOIN embedding_models m ON m.id = c.model_id "
            "WHERE d.id = :d AND d.state = 'parsing' AND d.attempts = :a"
        ),
        {"d": document_id, "a": attempt, "content": with_content},
    ).first()
    if row is None:
        return None
    return ClaimedDocument(
        row.id, row.collection_id, row.source, row.media_type, bytes(row.content), row.attempts, row.model_id, row.name
    )


def part_to_parse(session: Session, document_id: int, part: int, attempt: int) -> PartToParse | None:
    """A part still to parse under claim `attempt`; None when done, superseded or gone."""
    pages = session.execute(
        text(
            "SELECT page_start, page_end FROM document_parts "
            "WHERE document_id = :d AND part = :p AND attempt = :a AND blocks IS NULL"
        ),
        {"d": document_id, "p": part, "a": attempt},
    ).first()
    claim = load_claim(session, document_id, attempt, with_content=True) if pages else None
    return PartToParse(claim, pages.page_start, pages.page_end) if claim else None


def finish_part(session: Session, claim: ClaimedDocument, part: int, blocks: Sequence[Block], *, lease_s: int) -> bool:
    """Store a part's blocks; True when this was the last part missing (the caller then chunks)."""
    if not still_claimed(session, claim):  # also serialises the parts' finishers on the document row
        return False
    session.execute(
        text("UPDATE document_parts SET blocks = :b WHERE document_id = :d AND part = :p").bindparams(
            bindparam("b", type_=JSONB)
        ),
        {"d": claim.id, "p": part, "b": _blocks_json(blocks)},
    )
    renew_lease(session, claim.id, lease_s)
    missing = session.execute(
        text("SELECT count(*) FROM document_parts WHERE document_id = :d AND blocks IS NULL"), {"d": claim.id}
    ).scalar_one()
    return missing == 0


def part_blocks(session: Session, document_id: int) -> list[Block]:
    """Every part's blocks, in page order."""
    rows = session.execute(
        text("SELECT blocks FROM document_parts WHERE document_id = :d ORDER BY part"), {"d": document_id}
    ).scalars()
    return [Block(t, p, tuple(h), bool(is_h)) for blocks in rows for t, p, h, is_h in blocks]


def state_counts(session: Session, document_ids: Sequence[int]) -> dict[str, int]:
    rows = session.execute(
        text("SELECT state, count(*) FROM documents WHERE id = ANY(:ids) GROUP BY state"),
        {"ids": list(document_ids)},
    ).all()
    return {state: int(n) for state, n in rows}


# --- embedding -------------------------------------------------------------------


@dataclass(frozen=True)
class PendingChunk:
    chunk_id: int
    document_id: int
    text: str
    token_count: int


def model_row(session: Session, name: str) -> tuple[int, int] | None:
    """(id, dim) of a registered model."""
    row = session.execute(text("SELECT id, dim FROM embedding_models WHERE name = :n"), {"n": name}).first()
    return (int(row.id), int(row.dim)) if row else None


def claim_pending_chunks(
    session: Session, model_id: int, *, max_tokens: int, lease_s: int, max_rows: int = 4096
) -> list[PendingChunk]:
    """Lease pending chunks of one model across all documents, up to `max_tokens` tokens in total."""
    rows = session.execute(
        text(
            "WITH cand AS ("
            "  SELECT chunk_id, token_count FROM embedding_queue "
            "  WHERE model_id = :m AND (lease_until IS NULL OR lease_until < now()) "
            "  ORDER BY chunk_id LIMIT :rows FOR UPDATE SKIP LOCKED"
            "), budget AS ("
            "  SELECT chunk_id, sum(greatest(token_count, 1)) OVER (ORDER BY chunk_id) AS running FROM cand"
            "), picked AS ("
            "  SELECT chunk_id FROM budget WHERE running <= :budget "
            "  UNION SELECT min(chunk_id) FROM cand"  # at least one, even if it alone is over budget
            ") "
            "UPDATE embedding_queue q SET lease_until = now() + make_interval(secs => :lease), "
            "   attempts = q.attempts + 1 "
            "FROM picked p, chunks c "
            "WHERE q.model_id = :m AND q.chunk_id = p.chunk_id AND c.id = q.chunk_id "
            "RETURNING q.chunk_id, q.document_id, c.text, q.token_count"
        ),
        {"m": model_id, "rows": max_rows, "budget": max_tokens, "lease": lease_s},
    ).all()
    return [PendingChunk(r.chunk_id, r.document_id, r.text, r.token_count) for r in rows]


def write_embeddings(session: Session, model_id: int, chunk_ids: Sequence[int], vectors: np.ndarray) -> int:
    """COPY vectors in (binary), drop their queue rows, mark finished documents ready.

    Returns the number of documents that became ready. A vector that already
    exists (a redelivered batch) is kept as it is.
    """
    from pgvector.psycopg import register_vector

    raw = _raw(session)
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
    """Documents in `embedding` with nothing left in the queue become `ready`."""
    if not document_ids:
        return 0
    result = session.execute(
        text(
            "UPDATE documents d SET state = 'ready', last_error = NULL, updated_at = now() "
            "WHERE d.id = ANY(:ids) AND d.state = 'embedding' "
            "AND NOT EXISTS (SELECT 1 FROM embedding_queue q WHERE q.document_id = d.id)"
        ),
        {"ids": list(document_ids)},
    )
    return int(result.rowcount or 0)
