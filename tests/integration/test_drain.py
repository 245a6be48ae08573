"""The overlapped embed drain against real Postgres, with a fake embedder (fakes are fine for the model)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import text

from docpipe import store
from docpipe.config import EmbedConfig, Settings, WorkerConfig
from docpipe.drain import embed_pending
from docpipe.errors import RetryableError
from docpipe.types import Chunk
from tests.integration.seeding import seed_parsed

DIM = 4
MODEL = "test/drain-4d"


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic unit vectors from a hash of each text."""
    out = np.array([[b / 255 for b in hashlib.sha256(t.encode()).digest()[:DIM]] for t in texts], dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def seed(sessions, name: str, docs: int, chunks_per_doc: int, *, model: str = MODEL) -> list[int]:
    texts = [[f"{name} doc {i} chunk {j}" for j in range(chunks_per_doc)] for i in range(docs)]
    return seed_parsed(sessions, model, name, texts, dim=DIM, tokens=lambda j: 10 + j % 7)


def insert_queued(sessions, collection_id: int, name: str, docs: int) -> list[int]:
    """Ids of `docs` new documents, queued for a parse that this test does itself (`parse_into_chunks`)."""
    new = [
        store.NewDocument(f"/{name}/{i}", hashlib.sha256(f"{name}{i}".encode()).digest(), "text/plain", b"x", 1, {})
        for i in range(docs)
    ]
    with sessions.begin() as s:
        return [doc_id for doc_id, _ in store.insert_documents(s, collection_id, new)]


def parse_into_chunks(sessions, doc_ids: list[int], *, chunks_per_doc: int) -> None:
    """What a parse worker does to each document: claim it, store its chunks (queued for embedding)."""
    for doc_id in doc_ids:
        with sessions.begin() as s:
            doc = store.claim_for_parse(s, doc_id, lease_s=60)
            chunks = [Chunk(j, f"doc {doc_id} chunk {j}", 8, 1, 1) for j in range(chunks_per_doc)]
            store.save_chunks(s, doc, chunks, page_count=1)


def settings(max_batch_tokens: int = 200) -> Settings:
    return Settings(embed=EmbedConfig(max_batch_tokens=max_batch_tokens), worker=WorkerConfig(lease_s=300))


def test_drain_embeds_every_chunk_of_many_documents_once(sessions) -> None:
    doc_ids = seed(sessions, "drain-many", docs=30, chunks_per_doc=7)
    stats = embed_pending(MODEL, sessions=sessions, embed=fake_embed, settings=settings())
    with sessions.begin() as s:
        counts = store.job_progress(s, doc_ids).counts
        dup = s.execute(text("SELECT count(*) - count(DISTINCT chunk_id) FROM embeddings")).scalar()
    assert stats.chunks == 30 * 7
    assert stats.batches > 1 and max(stats.batch_sizes) > 7  # batches span documents
    assert counts == {"ready": 30}
    assert dup == 0
    assert 0 < stats.model_busy <= 1
    assert stats.padded_tokens >= stats.tokens and 0 <= stats.padding_waste < 0.5  # length-sorted packing


def test_a_failing_forward_pass_propagates_and_loses_nothing(sessions) -> None:
    doc_ids = seed(sessions, "drain-fail", docs=5, chunks_per_doc=10)
    calls = 0

    def flaky(texts: list[str]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 2:  # transient: the whole batch waits for its lease (a non-transient one is isolated)
            raise RetryableError("device lost")
        return fake_embed(texts)

    with pytest.raises(RetryableError, match="device lost"):
        embed_pending(MODEL, sessions=sessions, embed=flaky, settings=settings(max_batch_tokens=100))
    with sessions.begin() as s:  # the lease of the failed batch expires (as the sweeper would wait for)
        s.execute(text("UPDATE embedding_queue SET lease_until = now() - interval '1 s'"))
    embed_pending(MODEL, sessions=sessions, embed=fake_embed, settings=settings())
    with sessions.begin() as s:
        assert store.job_progress(s, doc_ids).counts == {"ready": 5}
        n = s.execute(
            text("SELECT count(*) FROM embeddings e JOIN chunks c ON c.id = e.chunk_id WHERE c.document_id = ANY(:d)"),
            {"d": doc_ids},
        ).scalar()
    assert n == 50


def hnsw_index_exists(sessions, model: str) -> bool:
    with sessions.begin() as s:
        model_id = store.model_row(s, model)[0]
        return bool(
            s.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": f"embeddings_hnsw_m{model_id}"}).scalar()
        )


def test_bulk_load_drops_the_index_and_rebuilds_it_when_drained(sessions) -> None:
    bulk_model = "test/bulk-4d"
    with sessions.begin() as s:
        coll = store.ensure_collection(s, "drain-bulk", model=bulk_model, dim=DIM)
    parse_into_chunks(sessions, insert_queued(sessions, coll.id, "bulk", 4), chunks_per_doc=10)
    assert hnsw_index_exists(sessions, bulk_model)
    seen_during: list[bool] = []
    said: list[bool] = []

    def watching_embed(texts: list[str]) -> np.ndarray:
        seen_during.append(hnsw_index_exists(sessions, bulk_model))
        with sessions.begin() as s:  # said where a user looks
            said.append(store.collection_status(s, "drain-bulk")["drain-bulk"]["index_deferred"])
            said.append(store.get_collection(s, "drain-bulk").index_deferred)
        return fake_embed(texts)

    cfg = Settings(embed=EmbedConfig(max_batch_tokens=100, bulk_load_chunks=20), worker=WorkerConfig(lease_s=300))
    stats = embed_pending(bulk_model, sessions=sessions, embed=watching_embed, settings=cfg)
    assert stats.index_deferred and stats.chunks == 40
    assert seen_during and not any(seen_during)  # loaded without the index
    assert said and all(said)
    assert hnsw_index_exists(sessions, bulk_model) and stats.index_build_s > 0
    with sessions.begin() as s:
        assert not s.execute(
            text("SELECT index_deferred FROM embedding_models WHERE name = :n"), {"n": bulk_model}
        ).scalar()
        hits = s.execute(
            text("SELECT count(*) FROM docpipe_search(CAST(:v AS vector), 'drain-bulk', 5)"), {"v": "[1,0,0,0]"}
        ).scalar()
    assert hits == 5


def test_documents_still_to_parse_count_in_the_load(sessions) -> None:
    """Many small files: the embedder keeps pace with parsing, so few chunks are pending at any moment."""
    model = "test/bulk-unparsed-4d"
    seed(sessions, "bulk-unparsed", docs=1, chunks_per_doc=5, model=model)  # 5 pending < 20
    with sessions.begin() as s:
        coll = store.get_collection(s, "bulk-unparsed")
    queued = insert_queued(sessions, coll.id, "unparsed", 30)  # 30 documents queued: 35 chunks on their way in
    cfg = Settings(embed=EmbedConfig(max_batch_tokens=100, bulk_load_chunks=20), worker=WorkerConfig(lease_s=300))
    stats = embed_pending(model, sessions=sessions, embed=fake_embed, settings=cfg)
    assert stats.chunks == 5 and stats.index_deferred
    assert not hnsw_index_exists(sessions, model)  # not rebuilt while documents are still to parse
    parse_into_chunks(sessions, queued, chunks_per_doc=1)
    stats = embed_pending(model, sessions=sessions, embed=fake_embed, settings=cfg)
    assert stats.chunks == 30 and stats.index_build_s > 0 and hnsw_index_exists(sessions, model)


def test_bulk_load_keeps_the_index_another_collection_searches_with(sessions) -> None:
    shared = "test/bulk-shared-4d"
    seed(sessions, "bulk-served", docs=2, chunks_per_doc=3, model=shared)
    cfg = Settings(embed=EmbedConfig(max_batch_tokens=100, bulk_load_chunks=20), worker=WorkerConfig(lease_s=300))
    assert not embed_pending(shared, sessions=sessions, embed=fake_embed, settings=cfg).index_deferred  # 6 < 20
    seed(sessions, "bulk-loading", docs=4, chunks_per_doc=10, model=shared)  # 40 pending > 6 indexed
    with sessions.begin() as s:
        model_id = store.get_collection(s, "bulk-loading").model_id
        assert store.collections_on_index(s, model_id) == ["bulk-served"]
    seen_during: list[bool] = []

    def watching_embed(texts: list[str]) -> np.ndarray:
        seen_during.append(hnsw_index_exists(sessions, shared))
        return fake_embed(texts)

    stats = embed_pending(shared, sessions=sessions, embed=watching_embed, settings=cfg)
    assert stats.chunks == 40 and not stats.index_deferred
    assert seen_during and all(seen_during)  # bulk-served's searches never lost the index
    with sessions.begin() as s:
        assert not store.collection_status(s, "bulk-served")["bulk-served"]["index_deferred"]


def test_a_load_that_grows_while_the_drain_runs_drops_the_index_then(sessions) -> None:
    """Chunks stream in from parse workers while the drain runs: the load is small when the drain starts."""
    streaming = "test/bulk-streaming-4d"
    seed(sessions, "bulk-streaming", docs=1, chunks_per_doc=12, model=streaming)  # 12 pending < 20
    seen_during: list[bool] = []

    def parsing_meanwhile(texts: list[str]) -> np.ndarray:
        seen_during.append(hnsw_index_exists(sessions, streaming))
        if len(seen_during) == 1:  # more documents are parsed during the first forward pass: 40 > 12 indexed
            seed(sessions, "bulk-streaming-more", docs=4, chunks_per_doc=10, model=streaming)
        return fake_embed(texts)

    cfg = Settings(embed=EmbedConfig(max_batch_tokens=20, bulk_load_chunks=20), worker=WorkerConfig(lease_s=300))
    stats = embed_pending(streaming, sessions=sessions, embed=parsing_meanwhile, settings=cfg, defer_check_s=0)
    assert stats.chunks == 52 and stats.index_deferred
    assert seen_during[0] and not seen_during[-1]  # dropped once the load had grown
    assert hnsw_index_exists(sessions, streaming) and stats.index_build_s > 0
