"""Rechunk: parse a collection's documents again from their stored bytes with new chunker settings.

The new chunks are built in a shadow collection (`collections.rechunk_of`):
one twin (same key, same bytes) per live document, parsed and embedded by the
ordinary pipeline with the new settings (and the new model, when one is
given). Search, BM25 statistics and the vector filter are per collection, so
the live collection answers from its old chunks meanwhile. Twins never
replace each other (`states.promote` skips shadows): each pairs with the live
version it re-parses.

`switch_rechunked` runs where `switch_finished` does (end of a drain, the
sweeper). It twins the versions stored since that the client did not twin at
ingest (`twin_versions`: SQL or other writers; the sweeper then enqueues them).
Once every version that is not failed has a ready twin, one transaction swaps
each ready document's chunks for its twin's (its id, metadata and key stay),
replaces in-flight versions by their twins, moves the postings and BM25
statistics, and adopts the settings and model. A failed twin holds the switch
and is reported (`docpipe_problems`: `rechunk_failed`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from docpipe.errors import ConfigError
from docpipe.states import DocState, promote, requeue_failed

__all__ = [
    "RechunkProgress",
    "rechunk_progress",
    "start_rechunk",
    "switch_rechunked",
    "twin_missing",
    "twin_versions",
]

log = logging.getLogger(__name__)
SWITCH_LOCK_TIMEOUT = "5s"  # the switch waits this long for a row a worker holds, then tries again later


def shadow_name(collection_id: int) -> str:
    """The shadow collection's name (collection names allow letters, digits, `_.-`)."""
    return f"rechunk.{int(collection_id)}"


def start_rechunk(session: Session, collection_id: int, chunking: dict[str, Any], model_id: int | None) -> list[int]:
    """Start (or resume) rechunking a collection with `chunking`, embedding with `model_id` (default: its own).

    Returns the twin ids to enqueue for parsing: new twins, and failed ones queued again when the same
    rechunk is started again. A rechunk to other settings still running is replaced.
    """
    row = session.execute(
        text(
            "SELECT id, model_id, next_model_id, chunking, rechunk_of, text_config::text AS text_config, "
            "bm25_k1, bm25_b FROM collections WHERE id = :c FOR UPDATE"
        ),
        {"c": collection_id},
    ).one()
    if row.rechunk_of is not None:
        raise ConfigError("this is a rechunk's shadow collection")
    if row.next_model_id is not None:
        raise ConfigError("a reindex to another model is running: wait for it to switch, then rechunk")
    target = model_id if model_id is not None else row.model_id
    if chunking == row.chunking and target == row.model_id:
        raise ConfigError("the collection is already chunked with these settings")
    shadow = session.execute(
        text("SELECT id, chunking, model_id FROM collections WHERE rechunk_of = :c FOR UPDATE"), {"c": collection_id}
    ).first()
    requeued: list[int] = []
    if shadow is not None and (shadow.chunking != chunking or shadow.model_id != target):
        session.execute(text("DELETE FROM collections WHERE id = :s"), {"s": shadow.id})  # cascades its twins
        shadow = None
    if shadow is None:
        taken = session.execute(
            text("SELECT 1 FROM collections WHERE name = :n"), {"n": shadow_name(collection_id)}
        ).first()
        if taken:
            raise ConfigError(f"a collection named {shadow_name(collection_id)!r} exists: rename it to rechunk")
        shadow_id = session.execute(
            text(
                "INSERT INTO collections (name, model_id, text_config, bm25_k1, bm25_b, chunking, rechunk_of) "
                "VALUES (:n, :m, CAST(:t AS regconfig), :k1, :b, CAST(:ch AS jsonb), :c) RETURNING id"
            ),
            {
                "n": shadow_name(collection_id),
                "m": target,
                "t": row.text_config,
                "k1": row.bm25_k1,
                "b": row.bm25_b,
                "ch": json.dumps(chunking),
                "c": collection_id,
            },
        ).scalar_one()
    else:
        shadow_id = shadow.id
        requeued = requeue_failed(session, collection=shadow_name(collection_id), ids=None)
    return requeued + twin_missing(session, collection_id, int(shadow_id))


def twin_missing(session: Session, collection_id: int, shadow_id: int) -> list[int]:
    """Copy every version that is not failed and has no twin yet into the shadow, queued; the new twin ids."""
    return list(
        session.execute(
            text(
                "INSERT INTO documents (collection_id, source, sha256, media_type, size_bytes, content, metadata, "
                "  state) "
                "SELECT :s, d.source, d.sha256, d.media_type, d.size_bytes, d.content, d.metadata, :queued "
                "FROM documents d WHERE d.collection_id = :c AND d.state <> :failed AND NOT EXISTS ("
                "  SELECT 1 FROM documents t WHERE t.collection_id = :s AND t.source = d.source "
                "  AND t.sha256 = d.sha256) "
                "ORDER BY d.id ON CONFLICT DO NOTHING RETURNING id"
            ),
            {"c": collection_id, "s": shadow_id, "queued": DocState.QUEUED, "failed": DocState.FAILED},
        ).scalars()
    )


def twin_versions(session: Session, collection_id: int, document_ids: Sequence[int]) -> list[int]:
    """Twins of versions just ingested, when a rechunk of their collection runs; the twin ids to enqueue.

    Without it they are twinned at the next switch check and parsed after the sweeper finds them.
    """
    if not document_ids:
        return []
    return list(
        session.execute(
            text(
                "INSERT INTO documents (collection_id, source, sha256, media_type, size_bytes, content, metadata, "
                "  state) "
                "SELECT s.id, d.source, d.sha256, d.media_type, d.size_bytes, d.content, d.metadata, :queued "
                "FROM collections s JOIN documents d ON d.collection_id = s.rechunk_of "
                "WHERE s.rechunk_of = :c AND d.id = ANY(:ids) AND d.state <> :failed "
                "ORDER BY d.id ON CONFLICT DO NOTHING RETURNING id"
            ),
            {"c": collection_id, "ids": list(document_ids), "queued": DocState.QUEUED, "failed": DocState.FAILED},
        ).scalars()
    )


_NOT_READY_TWINS = (
    "SELECT count(*) FROM documents d WHERE d.collection_id = :c AND d.state <> :failed AND NOT EXISTS ("
    "  SELECT 1 FROM documents t WHERE t.collection_id = :s AND t.source = d.source AND t.sha256 = d.sha256 "
    "  AND t.state = :ready)"
)


def switch_rechunked(session: Session) -> list[str]:
    """Switch every rechunked collection whose live versions all have ready twins; their names.

    Each runs in a savepoint under a lock timeout: one that would wait on a worker's row (or lost a race
    with a concurrent switch) gives up and is tried again at the next drain or sweep.
    """
    shadows = session.execute(
        text(
            "SELECT s.id, s.rechunk_of, r.name FROM collections s JOIN collections r ON r.id = s.rechunk_of "
            "JOIN embedding_models m ON m.id = s.model_id WHERE NOT m.index_deferred ORDER BY s.id"
        )
    ).all()
    switched = []
    for shadow in shadows:
        params = {"c": shadow.rechunk_of, "s": shadow.id, "ready": DocState.READY, "failed": DocState.FAILED}
        try:
            with session.begin_nested():
                session.execute(text(f"SET LOCAL lock_timeout = '{SWITCH_LOCK_TIMEOUT}'"))
                new_twins = twin_missing(session, shadow.rechunk_of, shadow.id)  # versions ingested since first
                waiting = new_twins or session.execute(text(_NOT_READY_TWINS), params).scalar()
                started = time.perf_counter()
                if not waiting and _switch(session, params):
                    switched.append(shadow.name)
                    log.info("rechunked collection %s switched in %.3f s", shadow.name, time.perf_counter() - started)
                session.execute(text("SET LOCAL lock_timeout = DEFAULT"))
        except (OperationalError, IntegrityError) as err:  # a worker held a row too long; a concurrent switch
            log.info("rechunk switch of %s postponed: %s", shadow.name, err.orig)
    return switched


def _switch(session: Session, params: dict[str, Any]) -> bool:
    """The switch itself, with the live collection's rows locked; False when a version changed meanwhile."""
    session.execute(text("SELECT id FROM collections WHERE id IN (:c, :s) ORDER BY id FOR UPDATE"), params)
    session.execute(text("SELECT id FROM documents WHERE collection_id = :c ORDER BY id FOR UPDATE"), params)
    if session.execute(text(_NOT_READY_TWINS), params).scalar():
        return False
    session.execute(  # twins of versions deleted, replaced or failed since
        text(
            "DELETE FROM documents t WHERE t.collection_id = :s AND NOT EXISTS ("
            "  SELECT 1 FROM documents d WHERE d.collection_id = :c AND d.state <> :failed "
            "  AND d.source = t.source AND d.sha256 = t.sha256)"
        ),
        params,
    )
    pairs = session.execute(
        text(
            "SELECT d.id AS live, t.id AS twin, d.state = :ready AS keep FROM documents d "
            "JOIN documents t ON t.collection_id = :s AND t.source = d.source AND t.sha256 = d.sha256 "
            "WHERE d.collection_id = :c AND d.state <> :failed ORDER BY d.id"
        ),
        params,
    ).all()
    keep = {"live": [p.live for p in pairs if p.keep], "twin": [p.twin for p in pairs if p.keep]}
    move = {"live": [p.live for p in pairs if not p.keep], "twin": [p.twin for p in pairs if not p.keep]}
    # Ready documents keep their row (id, metadata, key) and take their twin's chunks and vectors.
    session.execute(text("DELETE FROM chunks WHERE document_id = ANY(:live)"), keep)
    session.execute(
        text(
            "UPDATE chunks ch SET document_id = p.live FROM unnest(CAST(:live AS bigint[]), CAST(:twin AS bigint[])) "
            "AS p(live, twin) WHERE ch.document_id = p.twin"
        ),
        keep,
    )
    session.execute(
        text(
            "UPDATE documents d SET chunk_count = t.chunk_count, page_count = t.page_count, title = t.title, "
            "last_error = t.last_error, updated_at = now() "
            "FROM unnest(CAST(:live AS bigint[]), CAST(:twin AS bigint[])) AS p(live, twin), documents t "
            "WHERE d.id = p.live AND t.id = p.twin"
        ),
        keep,
    )
    session.execute(text("DELETE FROM documents WHERE id = ANY(:twin)"), keep)
    # Versions still in flight here are replaced by their ready twins (with their current metadata).
    session.execute(
        text(
            "UPDATE documents t SET metadata = d.metadata "
            "FROM unnest(CAST(:live AS bigint[]), CAST(:twin AS bigint[])) AS p(live, twin), documents d "
            "WHERE t.id = p.twin AND d.id = p.live"
        ),
        move,
    )
    session.execute(text("DELETE FROM documents WHERE id = ANY(:live)"), move)
    session.execute(text("UPDATE documents SET collection_id = :c WHERE id = ANY(:twin)"), {**params, **move})
    # The twins' postings, df deltas and BM25 statistics become the collection's.
    session.execute(text("UPDATE chunk_terms SET collection_id = :c WHERE collection_id = :s"), params)
    session.execute(  # the df deltas move folded: one row per lexeme
        text(
            "WITH gone AS (DELETE FROM chunk_term_df WHERE collection_id = :s RETURNING lexeme, chunks) "
            "INSERT INTO chunk_term_df (collection_id, lexeme, chunks) "
            "SELECT :c, lexeme, sum(chunks) FROM gone GROUP BY lexeme HAVING sum(chunks) <> 0"
        ),
        params,
    )
    session.execute(
        text(
            "INSERT INTO bm25_stats AS b (collection_id, chunks, terms) "
            "SELECT :c, chunks, terms FROM bm25_stats WHERE collection_id = :s "
            "ON CONFLICT (collection_id) DO UPDATE SET chunks = b.chunks + EXCLUDED.chunks, "
            "terms = b.terms + EXCLUDED.terms"
        ),
        params,
    )
    session.execute(text("DELETE FROM bm25_stats WHERE collection_id = :s"), params)
    promote(session, keep["live"] + move["twin"])  # one live version per key, as a replace leaves it
    session.execute(
        text(
            "UPDATE collections c SET chunking = s.chunking, model_id = s.model_id FROM collections s "
            "WHERE c.id = :c AND s.id = :s"
        ),
        params,
    )
    session.execute(text("DELETE FROM collections WHERE id = :s"), params)
    return True


@dataclass(frozen=True)
class RechunkProgress:
    chunking: dict[str, Any]  # the settings being applied
    model: str  # the model the new chunks are embedded with
    documents: int  # versions to re-parse (every one that is not failed)
    done: int  # of them, with a ready twin
    failed: list[tuple[str, str]]  # (key, reason) of re-parses that failed: they hold the switch
    chunks: int  # new chunks so far
    embedded: int  # of them, with a vector


def rechunk_progress(session: Session, collection_id: int) -> RechunkProgress | None:
    """Where a rechunk of the collection stands; None when none runs (read it in one snapshot: a switch
    may commit between two statements of a read-committed transaction)."""
    shadow = session.execute(
        text(
            "SELECT s.id, s.chunking, s.model_id, m.name AS model FROM collections s "
            "JOIN embedding_models m ON m.id = s.model_id WHERE s.rechunk_of = :c"
        ),
        {"c": collection_id},
    ).first()
    if shadow is None:
        return None
    params = {"c": collection_id, "s": shadow.id, "ready": DocState.READY, "failed": DocState.FAILED}
    total = session.execute(
        text("SELECT count(*) FROM documents WHERE collection_id = :c AND state <> :failed"), params
    ).scalar_one()
    missing = session.execute(text(_NOT_READY_TWINS), params).scalar_one()
    failed = session.execute(
        text(
            "SELECT source, coalesce(last_error, '') FROM documents WHERE collection_id = :s AND state = :failed "
            "ORDER BY source, id"
        ),
        params,
    ).all()
    chunks, embedded = session.execute(
        text(
            "SELECT count(*), count(*) FILTER (WHERE EXISTS ("
            "  SELECT 1 FROM embeddings e WHERE e.chunk_id = ch.id AND e.model_id = :m)) "
            "FROM chunks ch JOIN documents t ON t.id = ch.document_id WHERE t.collection_id = :s"
        ),
        {**params, "m": shadow.model_id},
    ).one()
    return RechunkProgress(
        shadow.chunking, shadow.model, int(total), int(total - missing), [(r[0], r[1]) for r in failed], int(chunks),
        int(embedded),
    )  # fmt: skip
