"""Query side: ANN and full-text candidates from SQL, fused by reciprocal rank, optionally reranked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, sessionmaker

FILTER_JSON = JSONB(none_as_null=True)  # no filter is SQL NULL, not the JSON value null
RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al. 2009)
SearchMode = Literal["hybrid", "vector", "text"]


@dataclass
class Hit:
    """One search result. `score`: higher is better (rerank score, RRF score or 1 - cosine distance)."""

    chunk_id: int
    document_id: int
    text: str
    source: str
    page_start: int
    page_end: int
    score: float
    distance: float | None = None  # cosine distance to the query, when the vector search found it
    heading_path: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _vector_literal(vec: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vec, dtype=np.float32).ravel()) + "]"


def vector_candidates(
    session: Session, query_vec: np.ndarray, collection: str, k: int, where: dict | None
) -> list[Hit]:
    """Nearest chunks by cosine distance through the collection model's HNSW index."""
    rows = session.execute(
        text("SELECT * FROM docpipe_search(CAST(:q AS vector), :c, :k, :f)").bindparams(
            bindparam("f", type_=FILTER_JSON)
        ),
        {"q": _vector_literal(query_vec), "c": collection, "k": k, "f": where},
    ).all()
    return [
        Hit(
            r.chunk_id,
            r.document_id,
            r.text,
            r.source,
            r.page_start,
            r.page_end,
            score=1.0 - r.distance,
            distance=r.distance,
            heading_path=list(r.heading_path),
        )
        for r in rows
    ]


def text_candidates(session: Session, query: str, collection: str, k: int, where: dict | None) -> list[int]:
    """Chunk ids matching the query words (Postgres full text, `websearch` syntax), best first."""
    return list(
        session.execute(
            text("SELECT chunk_id FROM docpipe_text_search(:q, :c, :k, :f)").bindparams(
                bindparam("f", type_=FILTER_JSON)
            ),
            {"q": query, "c": collection, "k": k, "f": where},
        ).scalars()
    )


def load_hits(session: Session, chunk_ids: Sequence[int]) -> dict[int, Hit]:
    rows = session.execute(
        text(
            "SELECT ch.id, ch.document_id, ch.text, d.source, ch.page_start, ch.page_end, ch.heading_path "
            "FROM chunks ch JOIN documents d ON d.id = ch.document_id WHERE ch.id = ANY(:ids)"
        ),
        {"ids": list(chunk_ids)},
    ).all()
    return {
        r.id: Hit(
            r.id,
            r.document_id,
            r.text,
            r.source,
            r.page_start,
            r.page_end,
            score=0.0,
            heading_path=list(r.heading_path),
        )
        for r in rows
    }


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], *, k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse ranked id lists: score(id) = Σ 1 / (k + rank), rank from 1; best first, ties by id."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def search_candidates(
    session: Session,
    *,
    query: str,
    query_vec: np.ndarray | None,
    collection: str,
    k: int,
    mode: SearchMode = "hybrid",
    where: dict | None = None,
) -> list[Hit]:
    """The top `k` hits of one collection by vector, full-text or fused (hybrid) ranking."""
    vec_hits = vector_candidates(session, query_vec, collection, k, where) if mode != "text" else []
    if mode == "vector":
        return vec_hits
    text_ids = text_candidates(session, query, collection, k, where)
    fused = reciprocal_rank_fusion([[h.chunk_id for h in vec_hits], text_ids])[:k]
    by_id = {h.chunk_id: h for h in vec_hits}
    missing = [cid for cid, _ in fused if cid not in by_id]
    by_id.update(load_hits(session, missing))
    hits = []
    for cid, score in fused:
        hit = by_id[cid]
        hit.score = score
        hits.append(hit)
    return hits


def rerank_chunks(
    query: str, chunk_ids: Sequence[int], *, sessions: sessionmaker[Session], reranker
) -> list[tuple[int, float]]:
    """(chunk_id, cross-encoder score) best first. Runs in the rerank worker."""
    with sessions.begin() as session:
        texts = dict(
            session.execute(text("SELECT id, text FROM chunks WHERE id = ANY(:ids)"), {"ids": list(chunk_ids)}).all()
        )
    ids = [cid for cid in chunk_ids if cid in texts]
    if not ids:
        return []
    scores = reranker.score(query, [texts[cid] for cid in ids])
    return sorted(zip(ids, (float(s) for s in scores), strict=True), key=lambda kv: -kv[1])


def hits_to_json(hits: Sequence[Hit]) -> str:
    """The CLI's `--json` output: text, source, page_start, page_end, score (and a few more keys)."""
    return json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2)
