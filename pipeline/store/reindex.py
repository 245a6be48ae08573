"""Reindex: embed a collection's stored chunks with another model, then switch it in one transaction.

While `collections.next_model_id` is set, every chunk of the collection
(ready or still in flight) is queued for both models; searches use
`model_id`. `switch_finished` moves a collection to its next model once no
chunk lacks a vector from it and the model's HNSW index exists. New chunker
settings (`--rechunk`) go through `store.rechunk` and switch at the same points.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from docpipe.errors import ConfigError
from docpipe.store.embeddings import FAIR_ROUND_CHUNKS
from docpipe.store.rechunk import RechunkProgress, rechunk_progress, switch_rechunked

__all__ = ["ReindexProgress", "drop_model_vectors", "reindex_progress", "start_reindex", "switch_finished"]


def start_reindex(session: Session, collection_id: int, model_id: int) -> int:
    """Make `model_id` the collection's next model and queue its chunks for it; chunks queued.

    A reindex to another model still running is replaced (its queue rows for this collection go).
    """
    row = session.execute(
        text("SELECT model_id, next_model_id FROM collections WHERE id = :c FOR UPDATE"), {"c": collection_id}
    ).one()
    if row.model_id == model_id:
        raise ConfigError("the collection already uses this model")
    if session.execute(text("SELECT 1 FROM collections WHERE rechunk_of = :c"), {"c": collection_id}).first():
        raise ConfigError("a rechunk is running: wait for it to switch (or rechunk with model= to change both)")
    if row.next_model_id is not None and row.next_model_id != model_id:
        session.execute(
            text(
                "DELETE FROM embedding_queue q USING documents d WHERE q.document_id = d.id "
                "AND d.collection_id = :c AND q.model_id = :old"
            ),
            {"c": collection_id, "old": row.next_model_id},
        )
    session.execute(
        text("UPDATE collections SET next_model_id = :m WHERE id = :c"), {"c": collection_id, "m": model_id}
    )
    result = session.execute(
        text(
            "INSERT INTO embedding_queue (chunk_id, model_id, document_id, token_count, round) "
            "SELECT ch.id, :m, ch.document_id, ch.token_count, ch.ordinal / :q "
            "FROM chunks ch JOIN documents d ON d.id = ch.document_id "
            "WHERE d.collection_id = :c AND NOT EXISTS ("
            "  SELECT 1 FROM embeddings e WHERE e.chunk_id = ch.id AND e.model_id = :m) "
            "ORDER BY ch.id ON CONFLICT DO NOTHING"
        ),
        {"c": collection_id, "m": model_id, "q": FAIR_ROUND_CHUNKS},
    )
    return int(result.rowcount or 0)


@dataclass(frozen=True)
class ReindexProgress:
    model: str  # what searches use now
    target: str | None  # the model being embedded, None when no reindex (or rechunk) runs
    embedded: int  # chunks with a vector from `target` (of the new chunks, during a rechunk)
    chunks: int  # chunks of the collection (the new chunks so far, during a rechunk)
    rechunk: RechunkProgress | None = None  # documents re-parsed, failures; None when no rechunk runs


def reindex_progress(session: Session, collection: str) -> ReindexProgress | None:
    """Where a reindex or rechunk of the collection stands; None for an unknown collection."""
    row = session.execute(
        text(
            "SELECT c.id, m.name AS model, n.name AS target, "
            "  (SELECT count(*) FROM chunks ch JOIN documents d ON d.id = ch.document_id "
            "     WHERE d.collection_id = c.id) AS chunks, "
            "  (SELECT count(*) FROM embeddings e JOIN chunks ch ON ch.id = e.chunk_id "
            "     JOIN documents d ON d.id = ch.document_id "
            "     WHERE d.collection_id = c.id AND e.model_id = c.next_model_id) AS embedded "
            "FROM collections c JOIN embedding_models m ON m.id = c.model_id "
            "LEFT JOIN embedding_models n ON n.id = c.next_model_id WHERE c.name = :c AND c.rechunk_of IS NULL"
        ),
        {"c": collection},
    ).first()
    if row is None:
        return None
    if (rechunk := rechunk_progress(session, row.id)) is not None:
        return ReindexProgress(row.model, rechunk.model, rechunk.embedded, rechunk.chunks, rechunk)
    return ReindexProgress(row.model, row.target, int(row.embedded), int(row.chunks))


def switch_finished(session: Session, model_id: int | None = None) -> list[str]:
    """Switch every collection (reindexing to `model_id`, or any) whose chunks all have their new vectors,
    and every rechunked one whose documents all have their new chunks embedded (`switch_rechunked`)."""
    return _switch_models(session, model_id) + switch_rechunked(session)


def _switch_models(session: Session, model_id: int | None) -> list[str]:
    return list(
        session.execute(
            text(
                "UPDATE collections c SET model_id = c.next_model_id, next_model_id = NULL "
                "FROM embedding_models m WHERE m.id = c.next_model_id AND NOT m.index_deferred "
                "AND (CAST(:m AS integer) IS NULL OR c.next_model_id = :m) "
                "AND NOT EXISTS ("
                "  SELECT 1 FROM chunks ch JOIN documents d ON d.id = ch.document_id "
                "  WHERE d.collection_id = c.id AND NOT EXISTS ("
                "    SELECT 1 FROM embeddings e WHERE e.chunk_id = ch.id AND e.model_id = c.next_model_id)) "
                "RETURNING c.name"
            ),
            {"m": model_id},
        ).scalars()
    )


def drop_model_vectors(session: Session, collection_id: int, model_id: int) -> int:
    """Delete the collection's vectors of a model it neither uses nor reindexes to; how many."""
    row = session.execute(
        text("SELECT model_id, next_model_id FROM collections WHERE id = :c FOR UPDATE"), {"c": collection_id}
    ).one()
    if model_id in (row.model_id, row.next_model_id):
        raise ConfigError("the collection searches with (or is reindexing to) this model: its vectors stay")
    result = session.execute(
        text(
            "DELETE FROM embeddings e USING chunks ch, documents d "
            "WHERE e.model_id = :m AND ch.id = e.chunk_id AND d.id = ch.document_id AND d.collection_id = :c"
        ),
        {"c": collection_id, "m": model_id},
    )
    return int(result.rowcount or 0)
