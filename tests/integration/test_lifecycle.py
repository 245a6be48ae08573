"""Lifecycle against a real Postgres: versions replace atomically, delete cascades and beats late writes, problems."""

from __future__ import annotations

import hashlib
import itertools
import threading

import numpy as np
import pytest
from sqlalchemy import text

from docpipe import states, store
from docpipe.types import Chunk
from tests.integration.seeding import found_by_each_path

DIM = 8
_names = itertools.count()


@pytest.fixture
def collection(sessions):
    with sessions.begin() as s:
        return store.ensure_collection(s, f"life{next(_names)}", model="test/life-8d", dim=DIM)


def store_version(sessions, collection, key: str, body: str, **metadata) -> tuple[int, bool]:
    content = body.encode()
    doc = store.NewDocument(key, hashlib.sha256(content).digest(), "text/plain", content, len(content), metadata)
    with sessions.begin() as s:
        [(doc_id, created)] = store.insert_documents(s, collection.id, [doc])
    return doc_id, created


def parse(sessions, doc_id: int, body: str) -> store.ClaimedDocument:
    """Claim and chunk a version: one chunk per line of `body`."""
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, doc_id, lease_s=60)
    assert claim is not None
    lines = [line for line in body.splitlines() if line.strip()]
    with sessions.begin() as s:
        store.save_chunks(s, claim, [Chunk(i, t, 4, 1, 1) for i, t in enumerate(lines)], page_count=1)
    return claim


def embed(sessions, collection, doc_id: int) -> int:
    """Write vectors for the version's pending chunks; documents that became ready."""
    with sessions.begin() as s:
        ids = list(
            s.execute(text("SELECT chunk_id FROM embedding_queue WHERE document_id = :d"), {"d": doc_id}).scalars()
        )
    vecs = np.random.default_rng(doc_id).normal(size=(len(ids), DIM)).astype(np.float32)
    with sessions.begin() as s:
        return store.write_embeddings(s, collection.model_id, ids, vecs)


def ingest(sessions, collection, key: str, body: str, **metadata) -> int:
    doc_id, _ = store_version(sessions, collection, key, body, **metadata)
    parse(sessions, doc_id, body)
    embed(sessions, collection, doc_id)
    return doc_id


def searchable(sessions, collection) -> set[str]:
    """Chunk texts SQL users can find: the view (vector side) and BM25 (keyword side) must agree."""
    view, keyword, vector = found_by_each_path(sessions, collection.name, words="alpha beta gamma delta", dim=DIM)
    assert vector == view, (vector, view)
    assert keyword <= view, (keyword, view)
    return view


def rows_left(sessions, doc_ids: list[int]) -> dict[str, int]:
    with sessions.begin() as s:
        return {
            table: s.execute(text(sql), {"ids": doc_ids}).scalar_one()
            for table, sql in {
                "documents": "SELECT count(*) FROM documents WHERE id = ANY(:ids)",
                "chunks": "SELECT count(*) FROM chunks WHERE document_id = ANY(:ids)",
                "queue": "SELECT count(*) FROM embedding_queue WHERE document_id = ANY(:ids)",
                "parts": "SELECT count(*) FROM document_parts WHERE document_id = ANY(:ids)",
                "orphan vectors": "SELECT count(*) FROM embeddings e WHERE NOT EXISTS "
                "(SELECT 1 FROM chunks c WHERE c.id = e.chunk_id)",
            }.items()
        }


def test_new_bytes_under_a_key_replace_the_old_version_only_once_ready(sessions, collection) -> None:
    v1 = ingest(sessions, collection, "notes.txt", "alpha one\nbeta one")
    assert searchable(sessions, collection) == {"alpha one", "beta one"}
    v2, created = store_version(sessions, collection, "notes.txt", "alpha two\ngamma two")
    assert created and v2 != v1
    assert searchable(sessions, collection) == {"alpha one", "beta one"}  # queued: the old version answers
    parse(sessions, v2, "alpha two\ngamma two")
    assert searchable(sessions, collection) == {"alpha one", "beta one"}  # embedding: still the old one
    assert embed(sessions, collection, v2) == 1
    assert searchable(sessions, collection) == {"alpha two", "gamma two"}  # one transaction swapped them
    assert rows_left(sessions, [v1])["documents"] == 0 and rows_left(sessions, [v1])["chunks"] == 0


def test_unchanged_bytes_are_a_no_op_and_a_failed_version_keeps_the_old(sessions, collection) -> None:
    v1 = ingest(sessions, collection, "a.txt", "alpha kept")
    assert store_version(sessions, collection, "a.txt", "alpha kept") == (v1, False)
    v2, _ = store_version(sessions, collection, "a.txt", "broken bytes")
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, v2, lease_s=60)
    with sessions.begin() as s:
        store.fail_document(s, claim, "corrupt file")
    assert searchable(sessions, collection) == {"alpha kept"}
    with sessions.begin() as s:
        found = store.problems(s, collection.name)
    assert [(p.id, p.source, p.problem, p.reason) for p in found] == [(v2, "a.txt", "failed", "corrupt file")]


def test_bytes_reverted_before_the_edit_is_live_drop_the_pending_edit(sessions, collection) -> None:
    v1 = ingest(sessions, collection, "r.txt", "alpha original")
    v2, _ = store_version(sessions, collection, "r.txt", "beta edit")
    assert store_version(sessions, collection, "r.txt", "alpha original") == (v1, False)
    assert rows_left(sessions, [v2])["documents"] == 0
    assert searchable(sessions, collection) == {"alpha original"}


def test_a_new_version_inherits_metadata_and_updates_touch_no_chunks(sessions, collection) -> None:
    v1 = ingest(sessions, collection, "m.txt", "alpha meta", team="legal")
    with sessions.begin() as s:
        chunks = s.execute(text("SELECT id FROM chunks WHERE document_id = :d"), {"d": v1}).scalars().all()
        changed = store.update_metadata(s, collection.id, store.Selection(ids=[v1]), {"year": 2026, "team": None})
    assert changed == 1
    v2 = ingest(sessions, collection, "m.txt", "beta meta", source="sync")
    with sessions.begin() as s:
        meta = s.execute(text("SELECT metadata FROM documents WHERE id = :d"), {"d": v2}).scalar_one()
        v1_chunks_gone = s.execute(text("SELECT count(*) FROM chunks WHERE id = ANY(:i)"), {"i": chunks}).scalar()
    assert meta == {"year": 2026, "source": "sync"} and v1_chunks_gone == 0


@pytest.mark.parametrize(
    ("selection", "gone"),
    [
        (store.Selection(keys=["docs/a.txt"]), {"docs/a.txt"}),
        (store.Selection(key_like=store.prefix_to_like("docs/")), {"docs/a.txt", "docs/b_1.txt"}),
        (store.Selection(key_like=store.glob_to_like("*_1.txt")), {"docs/b_1.txt", "other/c_1.txt"}),
        (store.Selection(key_like=store.glob_to_like("docs/?_1.txt")), {"docs/b_1.txt"}),
        (store.Selection(where={"team": "legal"}), {"docs/a.txt", "other/c_1.txt"}),
        (store.Selection(key_like=store.prefix_to_like("docs/"), where={"team": "legal"}), {"docs/a.txt"}),
    ],
)
def test_delete_selects_by_key_prefix_glob_and_metadata(sessions, collection, selection, gone) -> None:
    ids = {
        "docs/a.txt": ingest(sessions, collection, "docs/a.txt", "alpha a", team="legal"),
        "docs/b_1.txt": ingest(sessions, collection, "docs/b_1.txt", "beta b", team="ops"),
        "other/c_1.txt": ingest(sessions, collection, "other/c_1.txt", "gamma c", team="legal"),
        "docs%x.txt": ingest(sessions, collection, "docs%x.txt", "delta x", team="ops"),  # LIKE specials are literal
    }
    with sessions.begin() as s:
        preview = store.select_documents(s, collection.id, selection)
    assert {d.source for d in preview} == gone
    with sessions.begin() as s:
        deleted = store.delete_documents(s, collection.name, selection)
    assert {d.source for d in deleted} == gone
    assert rows_left(sessions, [ids[k] for k in gone]) == dict.fromkeys(
        ("documents", "chunks", "queue", "parts", "orphan vectors"), 0
    )
    kept = {"docs/a.txt": "alpha a", "docs/b_1.txt": "beta b", "other/c_1.txt": "gamma c", "docs%x.txt": "delta x"}
    assert searchable(sessions, collection) == {body for key, body in kept.items() if key not in gone}


def test_delete_needs_a_criterion(sessions, collection) -> None:
    with pytest.raises(ValueError, match="select documents"):
        store.Selection()
    with pytest.raises(Exception, match="needs document_ids"), sessions.begin() as s:
        s.execute(text("SELECT * FROM docpipe_delete(:c)"), {"c": collection.name})


def test_delete_while_parsing_wins_over_the_late_write(sessions, collection) -> None:
    doc_id, _ = store_version(sessions, collection, "late.txt", "alpha late")
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, doc_id, lease_s=60)
    with sessions.begin() as s:
        assert [d.id for d in store.delete_documents(s, collection.name, store.Selection(ids=[doc_id]))] == [doc_id]
    with sessions.begin() as s:  # the parse worker finishes after the delete: nothing is written
        assert store.save_chunks(s, claim, [Chunk(0, "alpha late", 4, 1, 1)], page_count=1) is None
    with sessions.begin() as s:
        store.fail_document(s, claim, "too late")
        assert store.claim_for_parse(s, doc_id, lease_s=60) is None
    assert rows_left(sessions, [doc_id])["documents"] == 0 and rows_left(sessions, [doc_id])["chunks"] == 0


def test_delete_while_embedding_leaves_no_vector_behind(sessions, collection) -> None:
    doc_id, _ = store_version(sessions, collection, "emb.txt", "alpha one\nbeta two")
    parse(sessions, doc_id, "alpha one\nbeta two")
    with sessions.begin() as s:
        batch = store.claim_pending_chunks(s, collection.model_id, max_tokens=10_000, lease_s=60)
    ids = [c.chunk_id for c in batch if c.document_id == doc_id]
    with sessions.begin() as s:
        store.delete_documents(s, collection.name, store.Selection(keys=["emb.txt"]))
    with sessions.begin() as s:  # the embed worker writes its batch after the delete
        assert store.write_embeddings(s, collection.model_id, ids, np.ones((len(ids), DIM), np.float32)) == 0
    with sessions.begin() as s:
        assert s.execute(text("SELECT count(*) FROM embeddings WHERE chunk_id = ANY(:i)"), {"i": ids}).scalar() == 0


def test_delete_racing_the_embed_write_in_flight(sessions, collection) -> None:
    """The write holds the key; the delete waits for it, then removes document, chunks and the fresh vectors."""
    doc_id, _ = store_version(sessions, collection, "race.txt", "alpha race\nbeta race")
    parse(sessions, doc_id, "alpha race\nbeta race")
    with sessions.begin() as s:
        batch = [c for c in store.claim_pending_chunks(s, collection.model_id, max_tokens=10_000, lease_s=60)]
    ids = [c.chunk_id for c in batch if c.document_id == doc_id]
    writer = sessions()
    writer.begin()
    store.write_embeddings(writer, collection.model_id, ids, np.ones((len(ids), DIM), np.float32))
    result: list = []
    deleter = threading.Thread(target=lambda: result.append(_delete_ids(sessions, collection, [doc_id])), daemon=True)
    deleter.start()
    deleter.join(timeout=1.0)
    assert deleter.is_alive()  # blocked on the writer's key lock
    writer.commit()
    writer.close()
    deleter.join(timeout=30)
    assert result == [[doc_id]]
    assert rows_left(sessions, [doc_id]) == dict.fromkeys(
        ("documents", "chunks", "queue", "parts", "orphan vectors"), 0
    )


def _delete_ids(sessions, collection, ids: list[int]) -> list[int]:
    with sessions.begin() as s:
        return [d.id for d in store.delete_documents(s, collection.name, store.Selection(ids=ids))]


def test_replace_racing_replace_leaves_exactly_the_newest_version(sessions, collection) -> None:
    """Two edits of one key processed concurrently, in either finishing order: one live version, the newest."""
    ingest(sessions, collection, "rr.txt", "alpha base")
    for order in ((0, 1), (1, 0)):
        bodies = [f"beta edit {order}{i}" for i in range(2)]
        ids = [store_version(sessions, collection, "rr.txt", b)[0] for b in bodies]
        for i in ids:
            parse(sessions, i, bodies[ids.index(i)])
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def finish(doc_id: int, barrier: threading.Barrier = barrier, errors: list = errors) -> None:
            try:
                barrier.wait()
                embed(sessions, collection, doc_id)
            except BaseException as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=finish, args=(ids[i],)) for i in order]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        with sessions.begin() as s:
            live = s.execute(
                text("SELECT id, state FROM documents WHERE collection_id = :c AND source = 'rr.txt'"),
                {"c": collection.id},
            ).all()
        assert [tuple(r) for r in live] == [(max(ids), "ready")]
        assert searchable(sessions, collection) == {bodies[1]}


def test_zero_chunk_documents_are_problems_not_hidden_among_ready(sessions, collection) -> None:
    doc_id, _ = store_version(sessions, collection, "scan.pdf", "image only")
    parse(sessions, doc_id, "")
    with sessions.begin() as s:
        status = store.collection_status(s, collection.name)[collection.name]
        found = store.problems(s, collection.name)
    assert status["no_text"] == 1 and status["problems"] == 1
    assert [(p.id, p.problem, p.reason) for p in found] == [(doc_id, "no_text", states.NO_TEXT_REASON)]


def test_a_zero_chunk_document_keeps_what_the_parser_said(sessions, collection) -> None:
    doc_id, _ = store_version(sessions, collection, "blank-scan.pdf", "image only")
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, doc_id, lease_s=60)
    with sessions.begin() as s:
        store.save_chunks(s, claim, [], page_count=2, why_no_text="no text found, even after OCR of 2 pages")
        [problem] = store.problems(s, collection.name)
    assert problem.reason == f"{states.NO_TEXT_REASON}: no text found, even after OCR of 2 pages"


def test_reindex_switches_in_one_transaction_once_every_chunk_has_its_new_vector(sessions, collection) -> None:
    first = ingest(sessions, collection, "x.txt", "alpha x\nbeta x")
    with sessions.begin() as s:
        new_model = store.ensure_model(s, f"test/life-4d-{collection.name}", 4)
        queued = store.start_reindex(s, collection.id, new_model)
    assert queued == 2
    with sessions.begin() as s:
        assert store.collection_status(s, collection.name)[collection.name]["reindexing_to"].startswith("test/life-4d")
    old_query, new_query = "[" + ",".join(["0.1"] * DIM) + "]", "[0.1,0.2,0.3,0.4]"

    def vector_search(q: str) -> set[str]:
        with sessions.begin() as s:
            return set(
                s.execute(
                    text("SELECT text FROM docpipe_search(CAST(:q AS vector), :c, 10)"), {"q": q, "c": collection.name}
                ).scalars()
            )

    # A document parsed mid-reindex is queued for both models and is ready only with both vectors.
    second, _ = store_version(sessions, collection, "y.txt", "gamma y")
    parse(sessions, second, "gamma y")
    with sessions.begin() as s:
        models = s.execute(
            text("SELECT model_id FROM embedding_queue WHERE document_id = :d ORDER BY model_id"), {"d": second}
        ).scalars()
        assert list(models) == sorted([collection.model_id, new_model])
    embed(sessions, collection, second)  # the old model's vectors only (embed() writes DIM-d vectors)
    with sessions.begin() as s:
        assert s.execute(text("SELECT state FROM documents WHERE id = :d"), {"d": second}).scalar() == "embedding"
    assert vector_search(old_query) == {"alpha x", "beta x"}

    with sessions.begin() as s:
        pending = store.claim_pending_chunks(s, new_model, max_tokens=10_000, lease_s=60)
    assert {c.document_id for c in pending} == {first, second}
    half = len(pending) // 2
    with sessions.begin() as s:
        store.write_embeddings(s, new_model, [c.chunk_id for c in pending[:half]], np.ones((half, 4), np.float32))
        assert store.switch_finished(s, new_model) == []
    assert vector_search(old_query) == {"alpha x", "beta x"}  # during: the old model answers
    rest = pending[half:]
    with sessions.begin() as s:
        store.write_embeddings(s, new_model, [c.chunk_id for c in rest], np.ones((len(rest), 4), np.float32))
        assert store.switch_finished(s, new_model) == [collection.name]
    assert vector_search(new_query) == {"alpha x", "beta x", "gamma y"}  # after: the new one, with y now ready
    with sessions.begin() as s:
        progress = store.reindex_progress(s, collection.name)
        assert progress.target is None and progress.model.startswith("test/life-4d")
        with pytest.raises(Exception, match="searches with"):
            store.drop_model_vectors(s, collection.id, new_model)
        assert store.drop_model_vectors(s, collection.id, collection.model_id) == 3


def test_the_collection_records_its_chunker_and_workers_use_it(sessions) -> None:
    from docpipe.config import Settings, TokenChunker
    from docpipe.processing import chunker_of

    recorded = TokenChunker(max_tokens=64, overlap_tokens=8)
    with sessions.begin() as s:
        coll = store.ensure_collection(
            s, f"life-chunk{next(_names)}", model="test/life-8d", dim=DIM, chunking=recorded.model_dump(mode="json")
        )
    assert coll.chunking == recorded.model_dump(mode="json")
    doc_id, _ = store_version(sessions, coll, "k.txt", "alpha")
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, doc_id, lease_s=60)
    worker = Settings(chunk=TokenChunker(max_tokens=300, overlap_tokens=0))  # another worker's environment
    assert chunker_of(claim, worker) == recorded
    legacy = claim.__class__(**{**claim.__dict__, "chunking": None})  # a collection from before 0006
    assert chunker_of(legacy, worker) == worker.chunk
