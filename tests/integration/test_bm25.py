"""BM25 inside Postgres: scores against a hand computation, statistics kept exact across adds and deletes."""

from __future__ import annotations

import hashlib
import itertools
import json
import math

import pytest
from sqlalchemy import text

from docpipe import store
from docpipe.config import SearchConfig
from docpipe.types import Chunk

K1, B = 1.2, 0.75
_names = itertools.count()

# Three one-chunk documents under the 'simple' configuration: lower-cased words, no stemming, no stop words.
DOCS = {
    "a": "apple banana apple",  # dl 3
    "b": "banana cherry",  # dl 2
    "c": "cherry cherry cherry date elder",  # dl 5
}


def add_document(sessions, collection, key: str, body: str, *, context: str = "") -> int:
    content = body.encode()
    doc = store.NewDocument(key, hashlib.sha256(content).digest(), "text/plain", content, len(content), {"k": key})
    with sessions.begin() as s:
        [(doc_id, _)] = store.insert_documents(s, collection.id, [doc])
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, doc_id, lease_s=60)
        store.save_chunks(s, claim, [Chunk(0, body, 3, 1, 1, (), context)], page_count=1)
        make_ready_without_vectors(s, doc_id)
    return doc_id


def make_ready_without_vectors(s, doc_id: int) -> None:
    """Only ready versions are searchable: finish a document for the keyword side alone."""
    s.execute(text("DELETE FROM embedding_queue WHERE document_id = :d"), {"d": doc_id})
    assert store.mark_ready(s, [doc_id]) == 1


@pytest.fixture
def collection(sessions):
    analysis = SearchConfig(text_config="simple", bm25_k1=K1, bm25_b=B)
    with sessions.begin() as s:
        coll = store.ensure_collection(s, f"bm25-{next(_names)}", model="test/bm25-only", dim=8, analysis=analysis)
    for key, body in DOCS.items():
        add_document(sessions, coll, key, body)
    return coll


def bm25(query: list[str], docs: dict[str, str]) -> dict[str, float]:
    """The textbook formula with Lucene's idf, computed by hand in Python."""
    tokens = {key: body.split() for key, body in docs.items()}
    n = len(tokens)
    avgdl = sum(map(len, tokens.values())) / n
    df = {term: sum(term in words for words in tokens.values()) for term in set(query)}
    out = {}
    for key, words in tokens.items():
        score = 0.0
        for term in query:
            tf = words.count(term)
            if tf:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * len(words) / avgdl))
        if score:
            out[key] = score
    return out


def text_search(sessions, query: str, collection, k: int = 10, where: dict | None = None) -> dict[str, float]:
    with sessions.begin() as s:
        rows = s.execute(
            text(
                "SELECT d.source, t.rank FROM docpipe_text_search(:q, :c, :k, CAST(:f AS jsonb)) t "
                "JOIN chunks ch ON ch.id = t.chunk_id JOIN documents d ON d.id = ch.document_id"
            ),
            {"q": query, "c": collection.name, "k": k, "f": None if where is None else json.dumps(where)},
        ).all()
    return {r.source: r.rank for r in rows}


@pytest.mark.parametrize("query", ["apple", "banana cherry", "cherry date", "banana banana", "kiwi"])
def test_scores_equal_the_hand_computed_formula(sessions, collection, query: str) -> None:
    got = text_search(sessions, query, collection)
    want = bm25(query.split(), DOCS)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6)


def test_ranking_follows_scores_and_k_limits_it(sessions, collection) -> None:
    got = text_search(sessions, "cherry banana", collection, k=2)
    want = sorted(bm25(["cherry", "banana"], DOCS).items(), key=lambda kv: -kv[1])[:2]
    assert list(got) == [key for key, _ in want]


def test_statistics_follow_adds_and_deletes(sessions, collection) -> None:
    more = dict(DOCS, d="fig fig apple")
    add_document(sessions, collection, "d", more["d"])
    got = text_search(sessions, "apple fig", collection)
    want = bm25(["apple", "fig"], more)
    assert got == pytest.approx(want, rel=1e-6)

    with sessions.begin() as s:
        s.execute(text("DELETE FROM documents WHERE collection_id = :c AND source IN ('a', 'd')"), {"c": collection.id})
    left = {k: v for k, v in DOCS.items() if k in ("b", "c")}
    assert text_search(sessions, "cherry", collection) == pytest.approx(bm25(["cherry"], left), rel=1e-6)
    with sessions.begin() as s:
        stats = s.execute(text("SELECT chunks, terms FROM bm25_stats WHERE collection_id = :c"), {"c": collection.id})
        assert tuple(stats.one()) == (2, 7)
        orphans = s.execute(
            text("SELECT count(*) FROM chunk_terms t WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = t.chunk_id)")
        ).scalar_one()
    assert orphans == 0


def test_context_header_is_indexed_and_metadata_filters(sessions, collection) -> None:
    add_document(sessions, collection, "e", "plain words here", context="Orchard Report")
    assert "e" in text_search(sessions, "orchard", collection)
    assert list(text_search(sessions, "cherry", collection, where={"k": "b"})) == ["b"]


def test_english_analysis_stems_and_drops_stop_words(sessions) -> None:
    with sessions.begin() as s:
        coll = store.ensure_collection(s, f"bm25-en-{next(_names)}", model="test/bm25-only", dim=8)
    add_document(sessions, coll, "x", "The runners were running through the gardens")
    add_document(sessions, coll, "y", "A quiet library with books")
    assert list(text_search(sessions, "garden run", coll)) == ["x"]
    assert text_search(sessions, "the were a with", coll) == {}  # stop words only: nothing to rank


def test_an_unknown_text_configuration_is_refused(sessions) -> None:
    from docpipe.errors import ConfigError

    with sessions.begin() as s, pytest.raises(ConfigError, match="text search configuration"):
        store.ensure_collection(
            s, "bm25-bad", model="test/bm25-only", dim=8, analysis=SearchConfig(text_config="klingon")
        )


def test_per_term_bound_reads_the_highest_impact_postings_and_completes_their_scores(sessions, collection) -> None:
    with sessions.begin() as s:
        rows = s.execute(
            text("SELECT chunk_id, rank FROM docpipe_text_search('cherry banana', :c, 10, NULL, 1)"),
            {"c": collection.name},
        ).all()
        sources = dict(
            s.execute(text("SELECT ch.id, d.source FROM chunks ch JOIN documents d ON d.id = ch.document_id")).all()
        )
    # One posting per term: cherry's best is c (tf 3), banana's is b (tf 1 in the shorter chunk). b's cherry
    # posting was not read, but completing b's score adds it; a (banana only, lower impact) is not a candidate.
    got = {sources[r.chunk_id]: r.rank for r in rows}
    exact = bm25(["cherry", "banana"], DOCS)
    assert got == pytest.approx({"b": exact["b"], "c": exact["c"]}, rel=1e-6)


def test_document_frequencies_fold_into_one_row_per_term(sessions, collection) -> None:
    add_document(sessions, collection, "d", "fig apple")
    with sessions.begin() as s:
        s.execute(text("DELETE FROM documents WHERE collection_id = :c AND source = 'd'"), {"c": collection.id})
        s.execute(text("SELECT docpipe_compact_term_df()"))
        rows = s.execute(
            text("SELECT lexeme, count(*), sum(chunks) FROM chunk_term_df WHERE collection_id = :c GROUP BY lexeme"),
            {"c": collection.id},
        ).all()
    df = {lexeme: (n, total) for lexeme, n, total in rows}
    assert df == {"apple": (1, 1), "banana": (1, 2), "cherry": (1, 2), "date": (1, 1), "elder": (1, 1)}  # no fig
    assert text_search(sessions, "apple banana", collection) == pytest.approx(bm25(["apple", "banana"], DOCS))


def test_many_postings_of_common_and_rare_terms_score_exactly(sessions) -> None:
    """Queries over 20,000 postings, common and rare terms mixed (Zipf): exhaustive reading gives the exact
    top k; the bounded default reads at most 1,000 postings per term, and the scores it returns are exact."""
    import random

    rng = random.Random(7)
    vocabulary = [f"w{i:03d}" for i in range(300)]
    weights = [1 / (i + 1) for i in range(len(vocabulary))]  # Zipf: a few words in most chunks, most in few
    bodies = [" ".join(rng.choices(vocabulary, weights, k=60)) for _ in range(5000)]
    analysis = SearchConfig(text_config="simple", bm25_k1=K1, bm25_b=B)
    with sessions.begin() as s:
        coll = store.ensure_collection(s, f"bm25-many-{next(_names)}", model="test/bm25-only", dim=8, analysis=analysis)
    content = b"many chunks"
    doc = store.NewDocument("many", hashlib.sha256(content).digest(), "text/plain", content, len(content), {})
    with sessions.begin() as s:
        [(doc_id, _)] = store.insert_documents(s, coll.id, [doc])
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, doc_id, lease_s=60)
        store.save_chunks(s, claim, [Chunk(i, body, 60, 1, 1) for i, body in enumerate(bodies)], page_count=1)
        make_ready_without_vectors(s, doc_id)
    keys = {f"c{i}": body for i, body in enumerate(bodies)}
    for query in ("w000 w001 w002 w003 w004 w005 w006 w007 w150 w210 w299", "w000 w001 w002 w003 w004 w120 w121"):
        postings = sum(term in body.split() for term in set(query.split()) for body in bodies)
        assert postings > 20_000
        exact = bm25(query.split(), keys)
        want = sorted(exact.values(), reverse=True)[:10]
        sql = (
            "SELECT ch.ordinal, t.rank FROM docpipe_text_search(:q, :c, 10, NULL, :p) t "
            "JOIN chunks ch ON ch.id = t.chunk_id"
        )
        with sessions.begin() as s:
            exhaustive = s.execute(text(sql), {"q": query, "c": coll.name, "p": -1}).all()
            bounded = s.execute(text(sql), {"q": query, "c": coll.name, "p": 0}).all()
        assert [rank for _, rank in exhaustive] == pytest.approx(want, rel=1e-6)
        assert {f"c{i}": rank for i, rank in bounded} == pytest.approx({f"c{i}": exact[f"c{i}"] for i, _ in bounded})
        assert [i for i, _ in bounded] == [i for i, _ in exhaustive]  # and here they are the same top k


def test_the_keyword_side_reads_the_snapshot_it_is_given(sessions, collection) -> None:
    """Hybrid search reads BM25 on another connection: from the dense side's snapshot, not from later commits."""
    from docpipe.search import export_snapshot, keyword_candidates

    with sessions.begin() as s:
        source_of = dict(
            s.execute(
                text(
                    "SELECT ch.id, d.source FROM chunks ch JOIN documents d ON d.id = ch.document_id "
                    "WHERE d.collection_id = :c"
                ),
                {"c": collection.id},
            ).all()
        )

    def sources(candidates) -> set[str]:
        return {source_of[cid] for cid in candidates.keyword}

    with sessions.begin() as reader:
        reader.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        snapshot = export_snapshot(reader)
        with sessions.begin() as s:  # committed after the snapshot was taken
            s.execute(text("DELETE FROM documents WHERE collection_id = :c AND source = 'b'"), {"c": collection.id})
        args = {"query": "banana", "collection": collection.name, "depth": 10, "where": None, "per_term": 0}
        assert sources(keyword_candidates(sessions, snapshot, **args)) == {"a", "b"}
    with sessions.begin() as reader:
        reader.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        assert sources(keyword_candidates(sessions, export_snapshot(reader), **args)) == {"a"}
    with pytest.raises(ValueError, match="snapshot id"):
        keyword_candidates(sessions, "1'; DROP TABLE chunks; --", **args)
