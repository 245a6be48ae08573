"""Documents after ingest: select by id/key/prefix/glob/metadata, delete, rename, update metadata, status, problems."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from docpipe import states

__all__ = [
    "DocumentRef",
    "JobProgress",
    "KeyVersion",
    "Problem",
    "Selection",
    "collection_status",
    "delete_documents",
    "glob_to_like",
    "job_progress",
    "key_versions",
    "prefix_to_like",
    "problems",
    "rename_document",
    "select_documents",
    "update_metadata",
]

_LIKE_SPECIAL = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_"})


def prefix_to_like(prefix: str) -> str:
    """A LIKE pattern matching the keys that start with `prefix`."""
    return prefix.translate(_LIKE_SPECIAL) + "%"


def glob_to_like(pattern: str) -> str:
    """A LIKE pattern for a shell glob over keys: `*` (and `**`) any run of characters, `?` one character.

    `*` crosses `/` like `fnmatch`; character classes (`[...]`) are refused rather than matched literally.
    """
    if "[" in pattern:
        raise ValueError(f"character classes are not supported in key globs: {pattern!r}")
    out = pattern.translate(_LIKE_SPECIAL).replace("**", "*")
    return out.replace("*", "%").replace("?", "_")


@dataclass(frozen=True)
class Selection:
    """Which documents of a collection: every criterion given must hold (at least one is required)."""

    ids: Sequence[int] | None = None
    keys: Sequence[str] | None = None  # exact keys
    key_like: str | None = None  # LIKE pattern on the key (`source`): see prefix_to_like, glob_to_like
    where: dict[str, Any] | None = None  # JSON containment on metadata

    def __post_init__(self) -> None:
        if self.ids is None and self.keys is None and self.key_like is None and self.where is None:
            raise ValueError("select documents by ids, key, prefix, glob or metadata filter")
        if self.where is not None and not isinstance(self.where, dict):
            raise ValueError("where must be a dict (JSON containment filter on document metadata)")

    def params(self) -> dict[str, Any]:
        return {
            "ids": [int(i) for i in self.ids] if self.ids is not None else None,
            "keys": list(self.keys) if self.keys is not None else None,
            "kl": self.key_like,
            "f": self.where,
        }


_SELECTED = (
    "d.collection_id = :c AND (CAST(:ids AS bigint[]) IS NULL OR d.id = ANY(:ids)) "
    "AND (CAST(:keys AS text[]) IS NULL OR d.source = ANY(:keys)) "
    "AND (CAST(:kl AS text) IS NULL OR d.source LIKE :kl) AND (CAST(:f AS jsonb) IS NULL OR d.metadata @> :f)"
)


@dataclass(frozen=True)
class DocumentRef:
    id: int
    source: str
    state: str


def select_documents(
    session: Session, collection_id: int, sel: Selection, *, limit: int | None = None
) -> list[DocumentRef]:
    """The documents `sel` names, by id (what a delete would remove)."""
    rows = session.execute(
        text(f"SELECT d.id, d.source, d.state FROM documents d WHERE {_SELECTED} ORDER BY d.id LIMIT :l").bindparams(
            bindparam("f", type_=JSONB(none_as_null=True))
        ),
        {"c": collection_id, "l": limit, **sel.params()},
    ).all()
    return [DocumentRef(int(r.id), r.source, r.state) for r in rows]


def delete_documents(session: Session, collection: str, sel: Selection) -> list[DocumentRef]:
    """Delete what `sel` names with chunks, vectors, postings and queue rows (SQL `docpipe_delete`)."""
    p = sel.params()
    rows = session.execute(
        text("SELECT * FROM docpipe_delete(:c, CAST(:ids AS bigint[]), CAST(:keys AS text[]), :kl, :f)").bindparams(
            bindparam("f", type_=JSONB(none_as_null=True))
        ),
        {"c": collection, **p},
    ).all()
    return [DocumentRef(int(r.document_id), r.source, r.state) for r in rows]


def update_metadata(
    session: Session, collection_id: int, sel: Selection, patch: dict[str, Any], *, replace: bool = False
) -> int:
    """Merge `patch` into the selected documents' metadata (a None value removes the key); how many changed.

    `replace`: the metadata becomes `patch` (None values dropped). Chunks and vectors are untouched.
    """
    if not isinstance(patch, dict):
        raise ValueError("patch must be a dict")
    drop = [k for k, v in patch.items() if v is None]
    keep = {k: v for k, v in patch.items() if v is not None}
    result = session.execute(
        text(
            "UPDATE documents d SET metadata = (CASE WHEN :replace THEN CAST(:keep AS jsonb) "
            "  ELSE d.metadata || CAST(:keep AS jsonb) END) - CAST(:drop AS text[]), updated_at = now() "
            f"WHERE {_SELECTED}"
        ).bindparams(bindparam("f", type_=JSONB(none_as_null=True))),
        {"c": collection_id, "keep": json.dumps(keep), "drop": drop, "replace": replace, **sel.params()},
    )
    return int(result.rowcount or 0)


@dataclass(frozen=True)
class KeyVersion:
    """The newest version stored under a key."""

    id: int
    sha256: bytes
    state: str


def key_versions(session: Session, collection_id: int, key_like: str) -> dict[str, KeyVersion]:
    """Key → its newest version, for the keys matching `key_like` (what a sync compares files with)."""
    rows = session.execute(
        text(
            "SELECT DISTINCT ON (source) source, id, sha256, state FROM documents "
            "WHERE collection_id = :c AND source LIKE :kl ORDER BY source, id DESC"
        ),
        {"c": collection_id, "kl": key_like},
    ).all()
    return {r.source: KeyVersion(int(r.id), bytes(r.sha256), r.state) for r in rows}


def rename_document(session: Session, collection_id: int, old_key: str, new_key: str) -> int:
    """Move every version of `old_key` to `new_key` (a file moved: nothing to re-parse); versions moved."""
    states.lock_source_keys(session, collection_id, [old_key, new_key])
    result = session.execute(
        text("UPDATE documents SET source = :n, updated_at = now() WHERE collection_id = :c AND source = :o"),
        {"c": collection_id, "o": old_key, "n": new_key},
    )
    return int(result.rowcount or 0)


@dataclass(frozen=True)
class Problem:
    """A document that is not searchable: `failed`, or `no_text` (ready, but nothing to index)."""

    id: int
    collection: str
    source: str
    problem: str
    reason: str | None
    attempts: int
    updated_at: Any


def problems(session: Session, collection: str | None, *, limit: int = 1000) -> list[Problem]:
    """Rows of the `docpipe_problems` view, newest first."""
    rows = session.execute(
        text(
            "SELECT document_id, collection, source, problem, reason, attempts, updated_at FROM docpipe_problems "
            "WHERE CAST(:c AS text) IS NULL OR collection = :c ORDER BY updated_at DESC, document_id LIMIT :l"
        ),
        {"c": collection, "l": limit},
    ).all()
    return [Problem(*r) for r in rows]


def collection_status(session: Session, collection: str | None) -> dict[str, dict[str, Any]]:
    """Per collection: model, documents per state, `no_text` (ready without chunks), chunks, vectors, whether
    the vector index is deferred for a bulk load, re-embed/chunk."""
    rows = session.execute(
        text(
            "SELECT c.name, m.name AS model, m.index_deferred, n.name AS next_model, "
            "  (SELECT json_object_agg(state, n) FROM (SELECT state, count(*) n FROM documents "
            "     WHERE collection_id = c.id GROUP BY state) s) AS states, "
            "  (SELECT count(*) FROM documents WHERE collection_id = c.id AND state = :ready "
            "     AND chunk_count = 0) AS no_text, "
            "  (SELECT count(*) FROM chunks ch JOIN documents d ON d.id = ch.document_id "
            "     WHERE d.collection_id = c.id) AS chunks, "
            "  (SELECT count(*) FROM embeddings e JOIN chunks ch ON ch.id = e.chunk_id "
            "     JOIN documents d ON d.id = ch.document_id "
            "     WHERE d.collection_id = c.id AND e.model_id = c.model_id) AS embeddings, "
            "  (SELECT s.chunking FROM collections s WHERE s.rechunk_of = c.id) AS rechunk, "
            "  (SELECT count(*) FROM collections s JOIN documents t ON t.collection_id = s.id "
            "     WHERE s.rechunk_of = c.id AND t.state = :failed) AS rechunk_failed "
            "FROM collections c JOIN embedding_models m ON m.id = c.model_id "
            "LEFT JOIN embedding_models n ON n.id = c.next_model_id "
            "WHERE c.rechunk_of IS NULL AND (CAST(:c AS text) IS NULL OR c.name = :c) ORDER BY c.name"
        ),
        {"c": collection, "ready": states.DocState.READY, "failed": states.DocState.FAILED},
    ).all()
    out = {}
    for r in rows:
        docs = r.states or {}
        out[r.name] = {
            "model": r.model,
            "documents": docs,
            "no_text": int(r.no_text),
            "problems": int(r.no_text) + int(docs.get(states.DocState.FAILED, 0)) + int(r.rechunk_failed),
            "chunks": r.chunks,
            "embeddings": r.embeddings,
            "index_deferred": r.index_deferred,  # HNSW index dropped for a bulk load: vector search scans exactly
            "reindexing_to": r.next_model,  # None unless a reindex runs (client.reindex_status: progress)
            "rechunking_to": r.rechunk,  # chunker settings a rechunk is applying, or None
        }
    return out


@dataclass(frozen=True)
class JobProgress:
    counts: dict[str, int]  # documents per state
    pages: int  # pages of the documents parsed so far


def job_progress(session: Session, document_ids: Sequence[int]) -> JobProgress:
    """Per-state counts and pages parsed among `document_ids` (versions replaced meanwhile count as ready)."""
    rows = session.execute(
        text(
            "SELECT state, count(*) AS n, coalesce(sum(page_count), 0) AS pages FROM documents "
            "WHERE id = ANY(:ids) GROUP BY state"
        ),
        {"ids": list(document_ids)},
    ).all()
    return JobProgress({r.state: int(r.n) for r in rows}, sum(int(r.pages) for r in rows))
