"""Query side: dense (HNSW) and BM25 candidates from one SQL round trip, fused, grouped, optionally reranked.

Fusion (`SearchConfig.fusion`):
- ``convex`` (default): each side's scores are min-max normalised over its own
  candidates, then combined as ``w·dense + (1 − w)·bm25``; a chunk missing from
  one side gets 0 there. Scores keep their margins, which rank fusion drops.
- ``rrf``: weighted reciprocal rank fusion, ``w/(k + rank)`` per side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, sessionmaker

from docpipe.chunk_context import embedded_text
from docpipe.config import SearchConfig

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Candidates:
    """Each side's candidates, best first: chunk id → dense similarity (1 − distance) and → BM25 score."""

    dense: dict[int, float]
    keyword: dict[int, float]


def vector_literal(vec: np.ndarray) -> str:
    """A pgvector text literal, '[x,y,...]'."""
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vec, dtype=np.float32).ravel()) + "]"


_CANDIDATES_SQL = {
    "vector": "SELECT 0 AS side, chunk_id, 1 - distance AS score FROM docpipe_search(CAST(:q AS vector), :c, :n, :f)",
    "text": "SELECT 1 AS side, chunk_id, rank AS score FROM docpipe_text_search(:t, :c, :n, :f, :p)",
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
    return Candidates(dense, keyword)


def min_max(scores: dict[int, float]) -> dict[int, float]:
    """Scores scaled to [0, 1] over their own list (all 1.0 when they are equal)."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {cid: (s - low) / span if span > 0 else 1.0 for cid, s in scores.items()}


def convex_fusion(dense: dict[int, float], keyword: dict[int, float], *, dense_weight: float) -> dict[int, float]:
    """w·minmax(dense) + (1 − w)·minmax(keyword); a chunk missing from one side scores 0 there."""
    d, kw = min_max(dense), min_max(keyword)
    return {cid: dense_weight * d.get(cid, 0.0) + (1 - dense_weight) * kw.get(cid, 0.0) for cid in d.keys() | kw.keys()}


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], *, k: int = 60, weights: Sequence[float] | None = None
) -> dict[int, float]:
    """score(id) = Σ w_i / (k + rank_i), rank from 1 (Cormack et al. 2009, weighted)."""
    weights = weights or [1.0] * len(rankings)
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return scores


def fuse(candidates: Candidates, mode: SearchMode, config: SearchConfig) -> dict[int, float]:
    """One score per candidate chunk for `mode`."""
    if mode == "vector":
        return dict(candidates.dense)
    if mode == "text":
        return dict(candidates.keyword)
    w = config.vector_weight
    if config.fusion == "rrf":
        rankings = [list(candidates.dense), list(candidates.keyword)]
        return reciprocal_rank_fusion(rankings, k=config.rrf_k, weights=[w, 1 - w])
    return convex_fusion(candidates.dense, candidates.keyword, dense_weight=w)


def ranked(scores: dict[int, float]) -> list[tuple[int, float]]:
    """(id, score) best first; ties by id, so results are stable."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


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
            "SELECT ch.id, ch.document_id, ch.text, d.source, ch.page_start, ch.page_end, ch.heading_path, ch.context "
            "FROM chunks ch JOIN documents d ON d.id = ch.document_id WHERE ch.id = ANY(:ids)"
        ),
        {"ids": list(chunk_ids)},
    ).all()
    return {
        r.id: Hit(
            r.id, r.document_id, r.text, r.source, r.page_start, r.page_end, score=0.0,
            heading_path=list(r.heading_path), context=r.context,
        )
        for r in rows
    }  # fmt: skip


def candidate_depth(k: int, config: SearchConfig, *, group_by: GroupBy = None, rerank_candidates: int = 0) -> int:
    """Chunks each side fetches: enough for `k` results (documents need several chunks each) and the reranker."""
    wanted = k * GROUP_DEPTH if group_by == "document" else k
    return max(wanted, config.candidates, rerank_candidates)


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
) -> list[Hit]:
    """Candidate chunks of one collection ranked by `mode` (`limit` of them, default all), best first."""
    candidates = fetch_candidates(
        session, query=query, query_vec=query_vec, collection=collection, depth=depth, mode=mode, where=where,
        per_term=config.bm25_per_term,
    )  # fmt: skip
    order = ranked(fuse(candidates, mode, config))[:limit]
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
    query: str, chunk_ids: Sequence[int], *, sessions: sessionmaker[Session], reranker
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
    scores = reranker.score(query, [texts[cid] for cid in ids])
    return sorted(zip(ids, (float(s) for s in scores), strict=True), key=lambda kv: -kv[1])


def hits_to_json(hits: Sequence[Hit]) -> str:
    """The CLI's `--json` output: text, source, page_start, page_end, score (and a few more keys)."""
    return json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2)
