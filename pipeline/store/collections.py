"""Embedding models, their HNSW indexes, and collections."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from docpipe.config import SearchConfig
from docpipe.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "CollectionInfo",
    "collections_on_index",
    "create_hnsw_index",
    "defer_index_for_bulk_load",
    "ensure_collection",
    "ensure_model",
    "get_collection",
    "rebuild_deferred_index",
]


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
    """Drop the model's HNSW index when the load outnumbers `min_pending` chunks and what is indexed.

    The load is the pending chunks plus one for each document of the model's collections still queued
    or parsing (each brings at least one): an ingest of many small files has few chunks pending at any
    moment while the embedder keeps pace with parsing, yet thousands of vectors on their way in.

    Kept while it serves a collection that is not loading (`collections_on_index`): a bulk load never
    turns another collection's searches into exact scans. Searches of the loading collections stay
    correct meanwhile (exact scans; `status` and `search` say so); `rebuild_deferred_index` builds the
    index once the queue is empty. True when this call dropped it.
    """
    if min_pending <= 0:
        return False
    pending = _load(session, model_id)
    if pending < min_pending:
        return False
    indexed = session.execute(  # counted up to `pending` only: a large index is not scanned to say no
        text("SELECT count(*) FROM (SELECT 1 FROM embeddings WHERE model_id = :m LIMIT :p) e"),
        {"m": model_id, "p": pending},
    ).scalar_one()
    if pending <= indexed:
        return False
    if served := collections_on_index(session, model_id):
        log.info("bulk load of %d chunks keeps the HNSW index of model %d: it serves %s", pending, model_id, served)
        return False
    won = session.execute(
        text("UPDATE embedding_models SET index_deferred = true WHERE id = :m AND NOT index_deferred RETURNING id"),
        {"m": model_id},
    ).first()
    if won:
        session.execute(text(f"DROP INDEX IF EXISTS embeddings_hnsw_m{int(model_id)}"))
        log.warning(
            "bulk load of %d chunks: HNSW index of model %d dropped, rebuilt when the queue is empty; "
            "searches of the loading collections scan exactly until then", pending, model_id,
        )  # fmt: skip
    return won is not None


def collections_on_index(session: Session, model_id: int) -> list[str]:
    """Searchable collections whose vectors of `model_id` the HNSW index serves and that have nothing queued
    for it (no pending chunks, no document waiting for or in a parse): the ones a bulk load elsewhere must
    not slow down."""
    return list(
        session.execute(
            text(
                "SELECT c.name FROM collections c WHERE c.model_id = :m AND c.rechunk_of IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM documents d JOIN embedding_queue q ON q.document_id = d.id "
                "                WHERE d.collection_id = c.id AND q.model_id = :m) "
                "AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.collection_id = c.id "
                "                AND d.state IN ('queued', 'parsing')) "
                "AND EXISTS (SELECT 1 FROM documents d JOIN chunks ch ON ch.document_id = d.id "
                "            JOIN embeddings e ON e.chunk_id = ch.id AND e.model_id = :m WHERE d.collection_id = c.id) "
                "ORDER BY c.name"
            ),
            {"m": model_id},
        ).scalars()
    )


def _load(session: Session, model_id: int) -> int:
    """Chunks on their way into the model's vectors, at least: those pending, plus one for each document
    of its collections still queued or parsing."""
    return session.execute(
        text(
            "SELECT (SELECT count(*) FROM embedding_queue WHERE model_id = :m) + "
            "(SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id "
            " WHERE c.model_id = :m AND d.state IN ('queued', 'parsing'))"
        ),
        {"m": model_id},
    ).scalar_one()


def rebuild_deferred_index(session: Session, model_id: int) -> bool:
    """Build a dropped index once nothing is pending for the model; True when this call built it."""
    row = session.execute(
        text("SELECT dim FROM embedding_models WHERE id = :m AND index_deferred FOR UPDATE SKIP LOCKED"),
        {"m": model_id},
    ).first()
    if row is None:
        return False
    pending = _load(session, model_id)
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
    text_config: str = "english"  # Postgres text search configuration of its keyword index
    chunking: dict | None = None  # chunker settings recorded at creation (None: created before they were)
    index_deferred: bool = False  # its model's HNSW index is dropped for a bulk load: vector search scans exactly


def get_collection(session: Session, name: str) -> CollectionInfo | None:
    row = session.execute(
        text(
            "SELECT c.id, c.name, c.model_id, m.name AS model, m.dim, c.text_config::text AS text_config, c.chunking, "
            "m.index_deferred "
            "FROM collections c JOIN embedding_models m ON m.id = c.model_id WHERE c.name = :n"
        ),
        {"n": name},
    ).first()
    if row is None:
        return None
    return CollectionInfo(
        row.id, row.name, row.model_id, row.model, row.dim, row.text_config, row.chunking, row.index_deferred
    )


def ensure_collection(
    session: Session,
    name: str,
    *,
    model: str,
    dim: int,
    analysis: SearchConfig | None = None,
    chunking: dict[str, Any] | None = None,
) -> CollectionInfo:
    """Collection `name`, created bound to `model`, `analysis` and `chunking` when it does not exist yet."""
    if (found := get_collection(session, name)) is not None:
        return found
    analysis = analysis or SearchConfig()
    known = session.execute(
        text("SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = split_part(:t, '.', -1))"),
        {"t": analysis.text_config},
    ).scalar_one()
    if not known:
        raise ConfigError(f"unknown text search configuration {analysis.text_config!r} (see \\dF in psql)")
    model_id = ensure_model(session, model, dim)
    session.execute(
        text(
            "INSERT INTO collections (name, model_id, text_config, bm25_k1, bm25_b, chunking) "
            "VALUES (:n, :m, CAST(:t AS regconfig), :k1, :b, CAST(:ch AS jsonb)) ON CONFLICT (name) DO NOTHING"
        ),
        {
            "n": name,
            "m": model_id,
            "t": analysis.text_config,
            "k1": analysis.bm25_k1,
            "b": analysis.bm25_b,
            "ch": json.dumps(chunking) if chunking is not None else None,
        },
    )
    found = get_collection(session, name)
    assert found is not None
    return found
