"""Query side: dense (HNSW) and BM25 candidates from one SQL round trip, fused, grouped, optionally reranked.

Chunks are fused chunk by chunk; with ``group_by="document"`` each side is
first reduced to its documents (a document scores its best chunk) and the
documents are fused, so a document whose best dense chunk and best BM25 chunk
differ gets credit from both. See `docpipe.fusion` for the methods.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, sessionmaker

from docpipe.chunk_context import embedded_text
from docpipe.config import SearchConfig
from docpipe.fusion import best_per_group, fuse_two, ranked

FILTER_JSON = JSONB(none_as_null=True)  # no filter is SQL NULL, not the JSON value null
SearchMode = Literal["hybrid", "vector", "text"]
GroupBy = Literal["document"] | None
GROUP_DEPTH = 3  # chunk candidates per wanted document when results are grouped by document


@dataclass
class Hit:
    """One search result. `score`: higher is better (rerank, fused, BM25 or 1 − cosine distance)."""

    chunk_id: int
    document_id: int
    text: str
    source: str
    page_start: int
    page_end: int
    score: float
    distance: float | None = None  # cosine distance to the query, when the dense side found it
    heading_path: list[str] = field(default_factory=list)
    context: str = ""  # the title and heading path embedded and indexed with the text
    bm25: float | None = None  # BM25 score, when the keyword side found it
    ocr: bool = False  # some of the text was read from page images by OCR
    ocr_confidence: float | None = None  # mean OCR recognition confidence of that text, 0..1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Candidates:
    """Each side's candidates, best first: chunk id → dense similarity (1 − distance) and → BM25 score."""

    dense: dict[int, float]
    keyword: dict[int, float]
    document_of: dict[int, int]  # chunk id → document id, for every candidate

    def merged(self, other: Candidates) -> Candidates:
        """Both sides: this one's dense and keyword candidates with `other`'s."""
        return Candidates(
            {**self.dense, **other.dense}, {**self.keyword, **other.keyword}, {**self.document_of, **other.document_of}
        )


def vector_literal(vec: np.ndarray) -> str:
    """A pgvector text literal, '[x,y,...]'."""
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vec, dtype=np.float32).ravel()) + "]"


_CANDIDATES_SQL = {
    "vector": "SELECT 0 AS side, chunk_id, document_id, 1 - distance AS score "
    "FROM docpipe_search(CAST(:q AS vector), :c, :n, :f)",
    "text": "SELECT 1 AS side, t.chunk_id, ch.document_id, t.rank AS score "
    "FROM docpipe_text_search(:t, :c, :n, :f, :p) t JOIN chunks ch ON ch.id = t.chunk_id",
}


def fetch_candidates(
    session: Session, *, query: str, query_vec: np.ndarray | None, collection: str, depth: int, mode: SearchMode,
    where: dict | None, per_term: int = 0,
) -> Candidates:  # fmt: skip
    """Up to `depth` candidates per side the mode uses, in one round trip."""
    sides = ["vector", "text"] if mode == "hybrid" else [mode]
    sql = " UNION ALL ".join(f"({_CANDIDATES_SQL[side]})" for side in sides)
    params: dict[str, Any] = {"c": collection, "n": depth, "f": where, "t": query, "p": per_term}
    if query_vec is not None:
        params["q"] = vector_literal(query_vec)
    rows = session.execute(text(sql).bindparams(bindparam("f", type_=FILTER_JSON)), params).all()
    dense = {int(r.chunk_id): float(r.score) for r in rows if r.side == 0}
    keyword = {int(r.chunk_id): float(r.score) for r in rows if r.side == 1}
    return Candidates(dense, keyword, {int(r.chunk_id): int(r.document_id) for r in rows})


_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


def export_snapshot(session: Session) -> str:
    """The id of this (repeatable-read) transaction's snapshot, for another connection to read the same data."""
    return str(session.execute(text("SELECT pg_export_snapshot()")).scalar_one())


def keyword_candidates(
    sessions: sessionmaker[Session], snapshot: str, *, query: str, collection: str, depth: int, where: dict | None,
    per_term: int,
) -> Candidates:  # fmt: skip
    """The BM25 side alone, on its own connection, reading `snapshot` (so both sides see one version of the data)."""
    if not _SNAPSHOT_ID.fullmatch(snapshot):  # SET takes no bind parameters: the id is checked, then inlined
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    with sessions.begin() as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        session.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
        return fetch_candidates(
            session, query=query, query_vec=None, collection=collection, depth=depth, mode="text", where=where,
            per_term=per_term,
        )  # fmt: skip


def fuse(
    candidates: Candidates, mode: SearchMode, config: SearchConfig, *, by_document: bool = False
) -> dict[int, float]:
    """One score per candidate chunk (or per document, `by_document`) for `mode`."""
    dense, keyword = candidates.dense, candidates.keyword
    if by_document:
        dense = best_per_group(dense, candidates.document_of)
        keyword = best_per_group(keyword, candidates.document_of)
    if mode == "vector":
        return dict(dense)
    if mode == "text":
        return dict(keyword)
    return fuse_two(dense, keyword, method=config.fusion, dense_weight=config.vector_weight, rrf_k=config.rrf_k)


def group_by_document(hits: Sequence[Hit]) -> list[Hit]:
    """The best hit of each document, in the order of `hits` (best first): max-score aggregation."""
    seen: set[int] = set()
    out = []
    for hit in hits:
        if hit.document_id not in seen:
            seen.add(hit.document_id)
            out.append(hit)
    return out


def load_hits(session: Session, chunk_ids: Sequence[int]) -> dict[int, Hit]:
    """Chunk id → Hit with text, source, pages and context (score 0 until the caller sets it)."""
    rows = session.execute(
        text(
            "SELECT ch.id, ch.document_id, ch.text, d.source, ch.page_start, ch.page_end, ch.heading_path, ch.context, "
            "ch.ocr, ch.ocr_confidence FROM chunks ch JOIN documents d ON d.id = ch.document_id WHERE ch.id = ANY(:ids)"
        ),
        {"ids": list(chunk_ids)},
    ).all()
    return {
        r.id: Hit(
            r.id, r.document_id, r.text, r.source, r.page_start, r.page_end, score=0.0,
            heading_path=list(r.heading_path), context=r.context, ocr=r.ocr, ocr_confidence=r.ocr_confidence,
        )
        for r in rows
    }  # fmt: skip


def candidate_depth(
    k: int, config: SearchConfig, *, mode: SearchMode = "hybrid", group_by: GroupBy = None, rerank_candidates: int = 0
) -> int:
    """Chunks each side fetches: enough for `k` results (documents need several chunks each), for fusion
    (`config.candidates`, hybrid only: one side alone needs no more than it returns) and for the reranker."""
    wanted = k * GROUP_DEPTH if group_by == "document" else k
    return max(wanted, config.candidates if mode == "hybrid" else 0, rerank_candidates)


def search_chunks(
    session: Session,
    *,
    query: str,
    query_vec: np.ndarray | None,
    collection: str,
    depth: int,
    config: SearchConfig,
    mode: SearchMode = "hybrid",
    where: dict | None = None,
    limit: int | None = None,
    group_by: GroupBy = None,
    keyword: Future[Candidates] | None = None,
) -> list[Hit]:
    """Candidate chunks of one collection ranked by `mode`, best first (`limit` of them, default all).

    With `group_by="document"`: one hit per document, ranked by the document-level fusion, each
    shown by its best chunk; `score` is the document's. `keyword`: the BM25 side of a hybrid
    search, already under way elsewhere (`keyword_candidates`); only the dense side is read here.
    """
    candidates = fetch_candidates(
        session, query=query, query_vec=query_vec, collection=collection, depth=depth,
        mode="vector" if keyword is not None else mode, where=where, per_term=config.bm25_per_term,
    )  # fmt: skip
    if keyword is not None:
        candidates = candidates.merged(keyword.result())
    chunk_scores = fuse(candidates, mode, config)
    order = ranked(chunk_scores)
    if group_by == "document":
        best_chunk = {}
        for cid, _ in order:
            best_chunk.setdefault(candidates.document_of[cid], cid)
        order = [(best_chunk[doc], score) for doc, score in ranked(fuse(candidates, mode, config, by_document=True))]
    order = order[:limit]
    by_id = load_hits(session, [cid for cid, _ in order])
    hits = []
    for cid, score in order:
        if (hit := by_id.get(cid)) is None:  # deleted since the candidates were read
            continue
        hit.score = score
        if cid in candidates.dense:
            hit.distance = 1.0 - candidates.dense[cid]
        hit.bm25 = candidates.keyword.get(cid)
        hits.append(hit)
    return hits


def rerank_chunks(
    query: str, chunk_ids: Sequence[int], *, sessions: sessionmaker[Session], reranker, deadline: float | None = None
) -> list[tuple[int, float]]:
    """(chunk_id, cross-encoder score) best first. Runs in the rerank worker; scores context + text."""
    with sessions.begin() as session:
        rows = session.execute(
            text("SELECT id, context, text FROM chunks WHERE id = ANY(:ids)"), {"ids": list(chunk_ids)}
        )
        texts = {r.id: embedded_text(r.context, r.text) for r in rows}
    ids = [cid for cid in chunk_ids if cid in texts]
    if not ids:
        return []
    scores = reranker.score(query, [texts[cid] for cid in ids], deadline=deadline)
    return sorted(zip(ids, (float(s) for s in scores), strict=True), key=lambda kv: -kv[1])


def hits_to_json(hits: Sequence[Hit]) -> str:
    """The CLI's `--json` output: text, source, page_start, page_end, score (and a few more keys)."""
    return json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2)
