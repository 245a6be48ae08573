"""Store operations against a real Postgres+pgvector: dedup, claims, COPY, exactly-once vectors."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter

import numpy as np
import pytest
from sqlalchemy import text

from docpipe import store
from docpipe.types import Chunk

DIM = 8
_names = itertools.count()


def new_doc(body: bytes, **kw) -> store.NewDocument:
    return store.NewDocument(
        source=f"/docs/{body[:10]!r}.txt",
        sha256=hashlib.sha256(body).digest(),
        media_type="text/plain",
        content=body,
        size_bytes=len(body),
        metadata=kw,
    )


@pytest.fixture
def collection(sessions):
    with sessions.begin() as s:
        return store.ensure_collection(s, f"c{next(_names)}", model="test/model-8d", dim=DIM)


def parsed(sessions, collection, body: bytes, n_chunks: int):
    with sessions.begin() as s:
        [(doc_id, created)] = store.insert_documents(s, collection.id, [new_doc(body)])
    assert created
    with sessions.begin() as s:
        doc = store.claim_for_parse(s, doc_id, lease_s=60)
    chunks = [
        Chunk(i, f"chunk {i} of {body!r}\x00".replace("\x00", ""), 5 + i, 1 + i, 1 + i, ("H",)) for i in range(n_chunks)
    ]
    with sessions.begin() as s:
        store.save_chunks(s, doc, chunks, page_count=n_chunks)
    return doc


def test_same_bytes_same_collection_is_one_document(sessions, collection) -> None:
    with sessions.begin() as s:
        first = store.insert_documents(s, collection.id, [new_doc(b"alpha"), new_doc(b"beta")])
    with sessions.begin() as s:
        again = store.insert_documents(s, collection.id, [new_doc(b"alpha")])
    assert [c for _, c in first] == [True, True]
    assert again == [(first[0][0], False)]
    with sessions.begin() as s:  # the same bytes twice in one call, beside bytes already stored
        twice = store.insert_documents(s, collection.id, [new_doc(b"gamma"), new_doc(b"gamma"), new_doc(b"beta")])
    assert twice[0][1] is True and twice[1] == (twice[0][0], False) and twice[2] == (first[1][0], False)


def test_claim_for_parse_is_exclusive(sessions, collection) -> None:
    with sessions.begin() as s:
        [(doc_id, _)] = store.insert_documents(s, collection.id, [new_doc(b"claim me")])
    with sessions.begin() as s:
        assert store.claim_for_parse(s, doc_id, lease_s=60) is not None
    with sessions.begin() as s:  # a redelivered message finds it leased
        assert store.claim_for_parse(s, doc_id, lease_s=60) is None
    with sessions.begin() as s:
        s.execute(text("UPDATE documents SET lease_until = now() - interval '1 s' WHERE id = :d"), {"d": doc_id})
    with sessions.begin() as s:  # an expired lease can be taken over, counting the attempt
        again = store.claim_for_parse(s, doc_id, lease_s=60)
    assert again is not None and again.attempts == 2


def test_claim_respects_token_budget_across_documents(sessions, collection) -> None:
    parsed(sessions, collection, b"doc one", 6)  # tokens 5..10
    parsed(sessions, collection, b"doc two", 6)
    with sessions.begin() as s:
        batch = store.claim_pending_chunks(s, collection.model_id, max_tokens=40, lease_s=60)
    assert sum(c.token_count for c in batch) <= 40
    assert len(batch) >= 4
    with sessions.begin() as s:
        rest = store.claim_pending_chunks(s, collection.model_id, max_tokens=10_000, lease_s=60)
    assert not {c.chunk_id for c in batch} & {c.chunk_id for c in rest}  # leased rows are skipped
    assert {c.document_id for c in rest} == {c.document_id for c in batch} | {c.document_id for c in rest}
    with sessions.begin() as s:
        assert store.claim_pending_chunks(s, collection.model_id, max_tokens=10_000, lease_s=60) == []


def test_claims_interleave_documents_so_a_huge_one_cannot_starve_a_small_one(sessions, collection) -> None:
    big = parsed(sessions, collection, b"one huge document", 30)  # queued first: chunk ids before the small one's
    small = parsed(sessions, collection, b"a small note", 1)
    try:
        with sessions.begin() as s:
            batch = store.claim_pending_chunks(s, collection.model_id, max_tokens=40, lease_s=60)
        docs = [c.document_id for c in batch]
        assert small.id in docs and big.id in docs  # in chunk-id order the budget went to the big one alone
        assert sum(c.token_count for c in batch) <= 40
    finally:
        with sessions.begin() as s:
            s.execute(text("DELETE FROM embedding_queue WHERE document_id = ANY(:d)"), {"d": [big.id, small.id]})


def test_a_document_longer_than_the_claim_window_takes_turns_in_rounds(sessions, collection) -> None:
    quantum = store.FAIR_ROUND_CHUNKS
    big = parsed(sessions, collection, b"a book", 3 * quantum)  # queued first: every chunk id before the note's
    small = parsed(sessions, collection, b"a note after the book", 2)
    try:
        with sessions.begin() as s:  # in chunk-id order this window would hold the book alone
            first = store.claim_pending_chunks(
                s, collection.model_id, max_tokens=10**6, lease_s=60, max_rows=quantum + 2
            )
        assert Counter(c.document_id for c in first) == {big.id: quantum, small.id: 2}
    finally:
        with sessions.begin() as s:
            s.execute(text("DELETE FROM embedding_queue WHERE document_id = ANY(:d)"), {"d": [big.id, small.id]})


def test_write_embeddings_is_exactly_once_and_marks_ready(sessions, collection) -> None:
    doc = parsed(sessions, collection, b"exactly once", 3)
    with sessions.begin() as s:
        batch = store.claim_pending_chunks(s, collection.model_id, max_tokens=10_000, lease_s=60)
    ids = [c.chunk_id for c in batch if c.document_id == doc.id]
    vecs = np.random.default_rng(0).normal(size=(len(ids), DIM)).astype(np.float32)
    with sessions.begin() as s:
        ready = store.write_embeddings(s, collection.model_id, ids, vecs)
    with sessions.begin() as s:  # the same batch delivered twice changes nothing
        store.write_embeddings(s, collection.model_id, ids, vecs + 1)
    with sessions.begin() as s:
        rows = s.execute(
            text("SELECT count(*), count(DISTINCT chunk_id) FROM embeddings WHERE chunk_id = ANY(:ids)"), {"ids": ids}
        ).one()
        state = s.execute(text("SELECT state FROM documents WHERE id = :d"), {"d": doc.id}).scalar_one()
        stored = s.execute(
            text("SELECT embedding::text FROM embeddings WHERE chunk_id = :c"), {"c": ids[0]}
        ).scalar_one()
    assert ready >= 1 and state == "ready"
    assert tuple(rows) == (3, 3)
    assert np.allclose(np.array(json.loads(stored)), vecs[0], atol=1e-6)  # first write kept (pgvector text is JSON)


def test_document_with_no_chunks_is_ready_with_a_note(sessions, collection) -> None:
    doc = parsed(sessions, collection, b"scanned", 0)
    with sessions.begin() as s:
        row = s.execute(text("SELECT state, last_error FROM documents WHERE id = :d"), {"d": doc.id}).one()
    assert row.state == "ready" and "no text" in row.last_error


def test_collection_names_are_validated_by_the_schema(sessions) -> None:
    from sqlalchemy.exc import IntegrityError

    with sessions.begin() as s:
        before = s.execute(text("SELECT count(*) FROM documents")).scalar_one()
    with pytest.raises(IntegrityError), sessions.begin() as s:
        store.ensure_collection(s, "x'; DROP TABLE documents; --", model="test/model-8d", dim=DIM)
    with sessions.begin() as s:  # the table is still there, with the same rows, and no such collection exists
        assert s.execute(text("SELECT count(*) FROM documents")).scalar_one() == before
        assert s.execute(text("SELECT count(*) FROM collections WHERE name LIKE 'x''%'")).scalar_one() == 0


def test_text_search_prefers_all_words_then_fills_with_any(sessions, collection) -> None:
    with sessions.begin() as s:
        [(doc_id, _)] = store.insert_documents(s, collection.id, [new_doc(b"lighthouse keeper notes")])
    with sessions.begin() as s:
        doc = store.claim_for_parse(s, doc_id, lease_s=60)
        texts = ["the lighthouse keeper wrote", "a keeper of bees", "the lighthouse at night", "nothing here"]
        store.save_chunks(s, doc, [Chunk(i, t, 5, 1, 1) for i, t in enumerate(texts)], page_count=1)
        # only ready versions are searchable: finish the document without vectors (keyword side only)
        s.execute(text("DELETE FROM embedding_queue WHERE document_id = :d"), {"d": doc_id})
        assert store.mark_ready(s, [doc_id]) == 1
    with sessions.begin() as s:
        found = (
            s.execute(
                text(
                    "SELECT c.text FROM docpipe_text_search('lighthouse keeper', :n, 3) t "
                    "JOIN chunks c ON c.id = t.chunk_id"
                ),
                {"n": collection.name},
            )
            .scalars()
            .all()
        )
        strict = s.execute(
            text("SELECT count(*) FROM docpipe_text_search('lighthouse keeper', :n, 1)"), {"n": collection.name}
        ).scalar_one()
    assert found[0] == "the lighthouse keeper wrote"
    assert set(found[1:]) == {"a keeper of bees", "the lighthouse at night"}
    assert strict == 1
