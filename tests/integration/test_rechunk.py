"""Rechunk against a real Postgres: new chunks from stored bytes, one switch, never both generations or neither."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time

import numpy as np
import pytest
from sqlalchemy import text

from docpipe import store
from docpipe.errors import ConfigError
from docpipe.types import Chunk
from tests.integration.seeding import found_by_each_path

DIM = 8
_names = itertools.count()
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
OLD = {"implementation": "token", "max_tokens": 4, "overlap_tokens": 0}
NEW = {"implementation": "token", "max_tokens": 2, "overlap_tokens": 0}


@pytest.fixture
def collection(sessions):
    with sessions.begin() as s:
        return store.ensure_collection(s, f"rechunk{next(_names)}", model="test/rechunk-8d", dim=DIM, chunking=OLD)


def body(i: int, n: int = 8) -> str:
    """`n` words, a different run of them per `i`: every chunk text is unique to its document and chunking."""
    return " ".join(f"{WORDS[(i + j) % len(WORDS)]}{i}" for j in range(n))


def store_version(sessions, collection, key: str, content: str) -> int:
    raw = content.encode()
    doc = store.NewDocument(key, hashlib.sha256(raw).digest(), "text/plain", raw, len(raw), {"key": key})
    with sessions.begin() as s:
        [(doc_id, _)] = store.insert_documents(s, collection.id, [doc])
    return doc_id


def parse(sessions, doc_id: int) -> store.ClaimedDocument:
    """Claim a version and chunk its stored bytes by the collection's `max_tokens` words (what a worker does)."""
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, doc_id, lease_s=60)
    assert claim is not None
    words = claim.content.decode().split()
    size = claim.chunking["max_tokens"]
    parts = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    with sessions.begin() as s:
        store.save_chunks(s, claim, [Chunk(i, t, size, 1, 1) for i, t in enumerate(parts)], page_count=1)
    return claim


def embed(sessions, doc_id: int) -> None:
    """Vectors for every pending chunk of the version, whatever model they are queued for."""
    with sessions.begin() as s:
        rows = s.execute(
            text(
                "SELECT q.chunk_id, q.model_id, m.dim FROM embedding_queue q JOIN embedding_models m "
                "ON m.id = q.model_id WHERE q.document_id = :d"
            ),
            {"d": doc_id},
        ).all()
    for model_id, dim in {(r.model_id, r.dim) for r in rows}:
        ids = [r.chunk_id for r in rows if r.model_id == model_id]
        with sessions.begin() as s:
            store.write_embeddings(s, model_id, ids, np.full((len(ids), dim), 0.1, np.float32))


def ingest(sessions, collection, key: str, content: str) -> int:
    doc_id = store_version(sessions, collection, key, content)
    parse(sessions, doc_id)
    embed(sessions, doc_id)
    return doc_id


def twins(sessions, collection) -> dict[str, int]:
    with sessions.begin() as s:
        return dict(
            s.execute(
                text(
                    "SELECT t.source, max(t.id) FROM documents t JOIN collections c ON c.id = t.collection_id "
                    "WHERE c.rechunk_of = :c GROUP BY t.source"
                ),
                {"c": collection.id},
            ).all()
        )


def chunk_sets(collection, bodies: dict[str, str], chunking: dict) -> set[str]:
    size = chunking["max_tokens"]
    out = set()
    for content in bodies.values():
        words = content.split()
        out |= {" ".join(words[i : i + size]) for i in range(0, len(words), size)}
    return out


def searchable(sessions, collection, *, dim: int = DIM) -> set[str]:
    """What each search path returns; the view, vector search and BM25 must agree."""
    words = " ".join(f"{w}{i}" for w in WORDS for i in range(16))
    view, keyword, vector = found_by_each_path(sessions, collection.name, words=words, dim=dim, per_term=-1)
    assert vector == view == keyword, (vector, view, keyword)
    return view


class Poller(threading.Thread):
    """Searches in a loop; records each answer, so a test can check every one came from one generation."""

    def __init__(self, sessions, collection) -> None:
        super().__init__(daemon=True)
        self.sessions, self.collection = sessions, collection
        self.answers: list[frozenset[str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with self.sessions.begin() as s:
                found = s.execute(
                    text(
                        "SELECT ch.text FROM docpipe_text_search(:q, :c, 1000, per_term => -1) t "
                        "JOIN chunks ch ON ch.id = t.chunk_id"
                    ),
                    {"q": " ".join(f"{w}{i}" for w in WORDS for i in range(16)), "c": self.collection.name},
                ).scalars()
                self.answers.append(frozenset(found))

    def finish(self) -> list[frozenset[str]]:
        self.stop.set()
        self.join(10)
        return self.answers


def test_rechunk_switches_the_whole_collection_once_every_document_has_new_embedded_chunks(
    sessions, collection
) -> None:
    bodies = {f"d{i}.txt": body(i) for i in range(3)}
    ids = {key: ingest(sessions, collection, key, content) for key, content in bodies.items()}
    old, new = chunk_sets(collection, bodies, OLD), chunk_sets(collection, bodies, NEW)
    assert searchable(sessions, collection) == old and len(old) == 6
    poller = Poller(sessions, collection)
    poller.start()

    with sessions.begin() as s:
        queued = store.start_rechunk(s, collection.id, NEW, None)
    assert len(queued) == 3
    twin = twins(sessions, collection)
    with sessions.begin() as s:  # the stored bytes are what is parsed again
        same = s.execute(
            text(
                "SELECT count(*) FROM documents d JOIN documents t ON t.source = d.source AND t.content = d.content "
                "WHERE d.id = ANY(:live) AND t.id = ANY(:twins)"
            ),
            {"live": list(ids.values()), "twins": list(twin.values())},
        ).scalar()
    assert same == 3
    for key in ("d0.txt", "d1.txt"):
        parse(sessions, twin[key])
        embed(sessions, twin[key])
    parse(sessions, twin["d2.txt"])  # chunks stored, not embedded yet
    with sessions.begin() as s:
        assert store.switch_finished(s) == []
        progress = store.reindex_progress(s, collection.name)
    assert progress.rechunk is not None and (progress.rechunk.documents, progress.rechunk.done) == (3, 2)
    assert (progress.chunks, progress.embedded) == (12, 8)
    assert searchable(sessions, collection) == old  # during: the old chunks answer, and only they

    embed(sessions, twin["d2.txt"])
    with sessions.begin() as s:
        assert store.switch_finished(s) == [collection.name]
    seen = len(poller.answers)
    while len(poller.answers) < seen + 2 and poller.is_alive():  # a search that began after the switch
        time.sleep(0.01)
    answers = poller.finish()
    assert searchable(sessions, collection) == new and len(new) == 12
    assert answers[0] == old and answers[-1] == new
    assert all(a in (old, new) for a in answers), {len(a) for a in answers}  # one generation, never empty

    with sessions.begin() as s:
        rows = s.execute(
            text("SELECT id, source, chunk_count, metadata FROM documents WHERE collection_id = :c ORDER BY id"),
            {"c": collection.id},
        ).all()
        assert [(r.id, r.source, r.chunk_count, r.metadata) for r in rows] == [
            (ids[k], k, 4, {"key": k}) for k in bodies
        ]  # same ids, keys and metadata
        assert store.get_collection(s, collection.name).chunking == NEW
        shadows = s.execute(text("SELECT count(*) FROM collections WHERE rechunk_of = :c"), {"c": collection.id})
        assert shadows.scalar() == 0
        stats = s.execute(text("SELECT chunks FROM bm25_stats WHERE collection_id = :c"), {"c": collection.id}).scalar()
        assert stats == 12
        assert store.reindex_progress(s, collection.name).rechunk is None
        assert store.problems(s, collection.name) == []


def test_a_failed_re_parse_keeps_the_old_chunks_live_and_is_reported(sessions, collection) -> None:
    bodies = {f"f{i}.txt": body(i + 3) for i in range(2)}
    for key, content in bodies.items():
        ingest(sessions, collection, key, content)
    old = chunk_sets(collection, bodies, OLD)
    with sessions.begin() as s:
        store.start_rechunk(s, collection.id, NEW, None)
    twin = twins(sessions, collection)
    parse(sessions, twin["f0.txt"])
    embed(sessions, twin["f0.txt"])
    with sessions.begin() as s:
        claim = store.claim_for_parse(s, twin["f1.txt"], lease_s=60)
        store.fail_document(s, claim, "parser crashed")
    with sessions.begin() as s:
        assert store.switch_finished(s) == []
        progress = store.reindex_progress(s, collection.name)
        problems = store.problems(s, collection.name)
    assert progress.rechunk.failed == [("f1.txt", "parser crashed")]
    assert [(p.source, p.problem, p.reason) for p in problems] == [("f1.txt", "rechunk_failed", "parser crashed")]
    with sessions.begin() as s:
        status = store.collection_status(s, None)
    assert status[collection.name]["problems"] == 1 and status[collection.name]["rechunking_to"] == NEW
    assert not any(name.startswith("rechunk.") for name in status)  # the shadow is not a collection users see
    assert searchable(sessions, collection) == old

    with sessions.begin() as s:  # the same rechunk again retries the failed one
        assert store.start_rechunk(s, collection.id, NEW, None) == [twin["f1.txt"]]
    parse(sessions, twin["f1.txt"])
    embed(sessions, twin["f1.txt"])
    with sessions.begin() as s:
        assert store.switch_finished(s) == [collection.name]
    assert searchable(sessions, collection) == chunk_sets(collection, bodies, NEW)


def test_edits_deletes_and_new_documents_during_a_rechunk_end_up_current(sessions, collection) -> None:
    bodies = {f"e{i}.txt": body(i + 5) for i in range(3)}
    for key, content in bodies.items():
        ingest(sessions, collection, key, content)
    with sessions.begin() as s:
        store.start_rechunk(s, collection.id, NEW, None)
    for doc_id in twins(sessions, collection).values():
        parse(sessions, doc_id)
        embed(sessions, doc_id)
    # Meanwhile: e0 is edited (its new version still in flight), e1 deleted, n.txt added and ready.
    bodies["e0.txt"] = body(9, 6)
    edited = store_version(sessions, collection, "e0.txt", bodies["e0.txt"])
    with sessions.begin() as s:
        store.delete_documents(s, collection.name, store.Selection(keys=["e1.txt"]))
    del bodies["e1.txt"]
    bodies["n.txt"] = body(11, 4)
    added = ingest(sessions, collection, "n.txt", bodies["n.txt"])
    with sessions.begin() as s:  # what the client does at ingest: the twin is enqueued with the version
        [n_twin] = store.twin_versions(s, collection.id, [added])
        assert store.twin_versions(s, collection.id, [added]) == []  # once
    with sessions.begin() as s:
        assert store.switch_finished(s) == []  # the edit (stored without the client) is twinned here
    pending = twins(sessions, collection)
    assert pending["n.txt"] == n_twin
    for key in ("e0.txt", "n.txt"):
        parse(sessions, pending[key])
        embed(sessions, pending[key])
    with sessions.begin() as s:
        assert store.switch_finished(s) == [collection.name]
    assert searchable(sessions, collection) == chunk_sets(collection, bodies, NEW)
    with sessions.begin() as s:  # the in-flight edit was replaced by its ready twin: one version per key
        keys = s.execute(
            text("SELECT source, state FROM documents WHERE collection_id = :c ORDER BY source"), {"c": collection.id}
        ).all()
        assert [tuple(k) for k in keys] == [("e0.txt", "ready"), ("e2.txt", "ready"), ("n.txt", "ready")]
        assert s.execute(text("SELECT 1 FROM documents WHERE id = :d"), {"d": edited}).first() is None


def test_rechunk_with_a_new_model_switches_both_and_refuses_a_second_reindex(sessions, collection) -> None:
    bodies = {"m.txt": body(1)}
    ingest(sessions, collection, "m.txt", bodies["m.txt"])
    with sessions.begin() as s:
        new_model = store.ensure_model(s, f"test/rechunk-4d-{collection.name}", 4)
        store.start_rechunk(s, collection.id, NEW, new_model)
        with pytest.raises(ConfigError, match="rechunk is running"):
            store.start_reindex(s, collection.id, new_model)
    [twin] = twins(sessions, collection).values()
    parse(sessions, twin)
    with sessions.begin() as s:
        models = s.execute(text("SELECT DISTINCT model_id FROM embedding_queue WHERE document_id = :d"), {"d": twin})
        assert list(models.scalars()) == [new_model]  # the new chunks need the new model only
    embed(sessions, twin)
    with sessions.begin() as s:
        assert store.switch_finished(s) == [collection.name]
        assert store.get_collection(s, collection.name).model_id == new_model
    assert searchable(sessions, collection, dim=4) == chunk_sets(collection, bodies, NEW)
    with sessions.begin() as s, pytest.raises(ConfigError, match="already chunked"):
        store.start_rechunk(s, collection.id, NEW, None)
    with sessions.begin() as s:  # a user collection holding the working copy's name
        store.ensure_collection(s, f"rechunk.{collection.id}", model="test/rechunk-8d", dim=DIM)
    with sessions.begin() as s, pytest.raises(ConfigError, match="exists: rename it"):
        store.start_rechunk(s, collection.id, OLD, None)


def test_a_parse_during_a_reindex_names_both_models_to_wake(sessions, minilm_dir, tmp_path) -> None:
    """The parse task wakes the embedder of every model it queued chunks for (`ParseOutcome.models`)."""
    from docpipe import processing
    from docpipe.config import ParseLimits, Settings
    from docpipe.parse import SandboxedParser

    model = str(minilm_dir)
    with sessions.begin() as s:
        coll = store.ensure_collection(s, f"rechunk-wake{next(_names)}", model=model, dim=384)
        target = store.ensure_model(s, f"test/rechunk-wake-4d-{coll.name}", 4)
    doc_id = store_version(sessions, coll, "w.txt", "Notes on the lighthouse lamp and its lenses.")
    with sessions.begin() as s:
        store.start_reindex(s, coll.id, target)
    with SandboxedParser(ParseLimits(timeout_s=60)) as parser:
        out = processing.parse_document(doc_id, sessions=sessions, parser=parser, settings=Settings(data_dir=tmp_path))
    assert (out.state, out.models) == ("embedding", [model, f"test/rechunk-wake-4d-{coll.name}"])


def test_a_switch_that_would_wait_on_a_workers_row_is_postponed(sessions, collection, monkeypatch) -> None:
    from docpipe.store import rechunk

    monkeypatch.setattr(rechunk, "SWITCH_LOCK_TIMEOUT", "200ms")
    bodies = {"p.txt": body(2)}
    live = ingest(sessions, collection, "p.txt", bodies["p.txt"])
    with sessions.begin() as s:
        store.start_rechunk(s, collection.id, NEW, None)
    [twin] = twins(sessions, collection).values()
    parse(sessions, twin)
    embed(sessions, twin)
    worker = sessions()
    try:
        worker.execute(text("SELECT 1 FROM documents WHERE id = :d FOR UPDATE"), {"d": live})  # e.g. a save
        with sessions.begin() as s:
            assert store.switch_finished(s) == []  # gave up after the lock timeout; the transaction goes on
            assert s.execute(text("SELECT 1")).scalar() == 1
        assert searchable(sessions, collection) == chunk_sets(collection, bodies, OLD)
    finally:
        worker.rollback()
        worker.close()
    with sessions.begin() as s:
        assert store.switch_finished(s) == [collection.name]
    assert searchable(sessions, collection) == chunk_sets(collection, bodies, NEW)
