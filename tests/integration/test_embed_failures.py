"""Embedding failures on real Postgres: a chunk the model fails on, claims that run out, leases kept alive.

The model is a fake (fakes are fine for the model); the queue, leases, states and sweeper are real.
"""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest
from sqlalchemy import text

from docpipe import store
from docpipe.config import EmbedConfig, Settings, WorkerConfig
from docpipe.drain import HeldLeases, embed_pending
from docpipe.errors import RetryableError
from docpipe.sweeper import find_stale_work
from tests.integration.seeding import seed_parsed

DIM = 4
POISON = "POISON-PILL"


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic unit vectors from a hash of each text; ValueError on a text carrying the poison."""
    if any(POISON in t for t in texts):
        raise ValueError("tokenizer refused the input")
    out = np.array([[b / 255 + 0.01 for b in hashlib.sha256(t.encode()).digest()[:DIM]] for t in texts])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def seed(sessions, model: str, name: str, texts: list[list[str]]) -> list[int]:
    return seed_parsed(sessions, model, name, texts, dim=DIM)


def settings(max_batch_tokens: int = 10_000, max_attempts: int = 3) -> Settings:
    return Settings(
        embed=EmbedConfig(max_batch_tokens=max_batch_tokens),
        worker=WorkerConfig(lease_s=300, max_attempts=max_attempts),
    )


def doc_rows(sessions, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    with sessions.begin() as s:
        rows = s.execute(text("SELECT id, state, last_error FROM documents WHERE id = ANY(:d)"), {"d": ids}).all()
    return {r.id: (r.state, r.last_error) for r in rows}


def model_id(sessions, model: str) -> int:
    with sessions.begin() as s:
        found = store.model_row(s, model)
    assert found is not None
    return found[0]


def expire_leases(sessions, mid: int) -> None:
    """What a dead drain leaves: its claims' leases run out."""
    with sessions.begin() as s:
        s.execute(
            text("UPDATE embedding_queue SET lease_until = now() - interval '1 s' WHERE model_id = :m"), {"m": mid}
        )


def claim_all(sessions, mid: int) -> list[store.PendingChunk]:
    """Every claimable row, claimed as a drain would (suspects one at a time, then fresh batches)."""
    out: list[store.PendingChunk] = []
    while True:
        with sessions.begin() as s:
            batch = store.claim_pending_chunks(s, mid, max_tokens=10_000, lease_s=300, max_attempts=3)
        if not batch:
            return out
        out.extend(batch)


def test_a_chunk_the_model_fails_on_fails_its_document_and_its_batch_mates_end_ready(sessions) -> None:
    model = "test/poison-4d"
    texts = [[f"doc {i} chunk {j}" for j in range(5)] for i in range(6)]
    texts[2][3] = f"doc 2 chunk 3 {POISON}"
    ids = seed(sessions, model, "poison", texts)
    passes = 0

    def counting(batch: list[str]) -> np.ndarray:
        nonlocal passes
        passes += 1
        return fake_embed(batch)

    stats = embed_pending(model, sessions=sessions, embed=counting, settings=settings())
    assert stats.batches == 1  # all 30 chunks in one batch: the poisoned chunk's batch-mates are every other doc
    states = doc_rows(sessions, ids)
    assert {d: st for d, (st, _) in states.items() if d != ids[2]} == {d: "ready" for d in ids if d != ids[2]}
    state, reason = states[ids[2]]
    assert state == "failed"
    assert reason == "embedding failed on chunk 3 (page 4): ValueError: tokenizer refused the input"
    assert passes <= 1 + 2 * 5 + 1  # the first pass, two halves per level of 30 -> 1, maybe a probe
    with sessions.begin() as s:
        mid = model_id(sessions, model)
        left = s.execute(text("SELECT count(*) FROM embedding_queue WHERE model_id = :m"), {"m": mid}).scalar()
        chunks_of_failed = s.execute(text("SELECT count(*) FROM chunks WHERE document_id = :d"), {"d": ids[2]}).scalar()
        vectors = s.execute(
            text(
                "SELECT c.document_id, count(*) FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
                "WHERE e.model_id = :m GROUP BY c.document_id"
            ),
            {"m": mid},
        ).all()
    assert left == 0  # nothing stays claimed: the drain went on, no document waits in `embedding`
    assert chunks_of_failed == 0  # a failed document keeps no chunks (as after a failed parse)
    assert dict(vectors) == {d: 5 for d in ids if d != ids[2]}


def test_several_poisoned_chunks_of_one_document_and_a_lone_one_in_another_batch(sessions) -> None:
    model = "test/poison2-4d"
    texts = [
        [f"d{i} c{j}" + (f" {POISON}" if (i, j) in {(0, 0), (0, 1), (3, 4)} else "") for j in range(6)]
        for i in range(5)
    ]
    ids = seed(sessions, model, "poison2", texts)
    embed_pending(
        model, sessions=sessions, embed=fake_embed, settings=settings(max_batch_tokens=100)
    )  # 10 chunks a batch, round robin: ordinals 0-1 of every doc, then 2-3, 4-5
    states = doc_rows(sessions, ids)
    assert states[ids[0]] == (
        "failed",
        "embedding failed on chunk 0 (page 1) (and 1 more of its chunks): ValueError: tokenizer refused the input",
    )
    assert states[ids[3]] == ("failed", "embedding failed on chunk 4 (page 5): ValueError: tokenizer refused the input")
    assert [states[d][0] for d in (ids[1], ids[2], ids[4])] == ["ready"] * 3


def test_a_model_that_fails_on_everything_blames_no_document(sessions) -> None:
    model = "test/broken-4d"
    ids = seed(sessions, model, "broken", [["a b c", "d e f"], ["g h i"]])

    def broken(batch: list[str]) -> np.ndarray:
        raise RuntimeError("model weights are corrupt")

    with pytest.raises(RuntimeError, match="corrupt"):
        embed_pending(model, sessions=sessions, embed=broken, settings=settings())
    states = doc_rows(sessions, ids)
    assert {st for st, _ in states.values()} == {"embedding"}  # the batch waits for its lease, as before
    assert {r for _, r in states.values()} == {"embedding: RuntimeError: model weights are corrupt"}


def test_claims_that_run_out_fail_the_document_after_max_attempts(sessions) -> None:
    """A drain that dies on a chunk (its process killed mid-batch) leaves the claim to expire; the third
    expiry fails the document, on the sweeper's path and on the next drain's, and nothing claims it again."""
    model = "test/attempts-4d"
    ids = seed(sessions, model, "attempts", [["one a", "one b"], ["two a"], ["three a"]])
    mid = model_id(sessions, model)
    cfg = settings(max_attempts=3)
    for attempt in (1, 2, 3):
        batch = claim_all(sessions, mid)
        assert {c.attempt for c in batch} == {attempt} and len(batch) == (4 if attempt < 3 else 3)
        if attempt == 2:  # doc three's chunk was embedded on the second try; docs one and two keep dying
            with sessions.begin() as s:
                three = [c for c in batch if c.document_id == ids[2]]
                store.write_embeddings(s, mid, [c.chunk_id for c in three], fake_embed([c.text for c in three]))
        expire_leases(sessions, mid)
        if attempt == 2:  # claims left: the model is still worth waking
            assert model in find_stale_work(sessions=sessions, settings=cfg).embed_models
    with sessions.begin() as s:
        assert store.claim_pending_chunks(s, mid, max_tokens=10_000, lease_s=300, max_attempts=3) == []
    # doc two fails on the next drain, doc one on the sweeper's pass (whichever comes first does both)
    with sessions.begin() as s:
        s.execute(
            text("UPDATE embedding_queue SET lease_until = now() + interval '1 h' WHERE document_id = :d"),
            {"d": ids[0]},
        )
    embed_pending(model, sessions=sessions, embed=fake_embed, settings=cfg)
    gave_up = (
        "gave up after 3 attempts; last error: none recorded; "
        "the last attempt's worker died or timed out (lease expired)"
    )
    assert doc_rows(sessions, ids)[ids[1]] == ("failed", gave_up)
    assert doc_rows(sessions, ids)[ids[0]][0] == "embedding"  # still leased: not exhausted yet
    expire_leases(sessions, mid)
    swept = find_stale_work(sessions=sessions, settings=cfg)
    assert swept.failed >= 1 and model not in swept.embed_models
    assert doc_rows(sessions, ids) == {
        ids[0]: ("failed", gave_up),
        ids[1]: ("failed", gave_up),
        ids[2]: ("ready", None),
    }
    with sessions.begin() as s:
        assert s.execute(text("SELECT count(*) FROM embedding_queue WHERE model_id = :m"), {"m": mid}).scalar() == 0


def test_a_transient_error_every_attempt_gives_up_with_that_error(sessions) -> None:
    model = "test/transient-4d"
    ids = seed(sessions, model, "transient", [["only chunk"]])
    mid = model_id(sessions, model)

    def oom(batch: list[str]) -> np.ndarray:
        raise RetryableError("CUDA out of memory on a single sequence of 10 tokens")

    for _ in range(2):
        with pytest.raises(RetryableError):
            embed_pending(model, sessions=sessions, embed=oom, settings=settings(max_attempts=2))
        expire_leases(sessions, mid)
    embed_pending(model, sessions=sessions, embed=fake_embed, settings=settings(max_attempts=2))
    assert doc_rows(sessions, ids)[ids[0]] == (
        "failed",
        "gave up after 2 attempts; last error: embedding: RetryableError: CUDA out of memory on a single sequence "
        "of 10 tokens",
    )


def test_untried_batches_of_a_failed_drain_are_released_uncounted(sessions) -> None:
    model = "test/release-4d"
    ids = seed(sessions, model, "release", [[f"d{i} c{j}" for j in range(4)] for i in range(6)])
    mid = model_id(sessions, model)
    ready = threading.Event()

    def slow_then_lost(batch: list[str]) -> np.ndarray:
        ready.wait(5)  # let the claimer lease the batches ahead
        raise RetryableError("device lost")

    def release_soon() -> None:
        time.sleep(1.0)
        ready.set()

    threading.Thread(target=release_soon, daemon=True).start()
    with pytest.raises(RetryableError):
        embed_pending(model, sessions=sessions, embed=slow_then_lost, settings=settings(max_batch_tokens=40))
    with sessions.begin() as s:
        rows = s.execute(
            text("SELECT attempts, lease_until IS NULL AS free FROM embedding_queue WHERE model_id = :m"), {"m": mid}
        ).all()
    tried = [r for r in rows if r.attempts == 1 and not r.free]
    assert len(tried) == 4  # the batch in the forward pass keeps its lease and its attempt
    assert all(r.attempts == 0 and r.free for r in rows if r not in tried)  # the rest: as if never claimed
    assert len(rows) == 24 and len(ids) == 6


def test_held_leases_are_renewed_and_a_reclaimed_row_is_not(sessions) -> None:
    model = "test/renew-4d"
    seed(sessions, model, "renew", [["a"], ["b"]])
    mid = model_id(sessions, model)
    with sessions.begin() as s:
        batch = store.claim_pending_chunks(s, mid, max_tokens=10_000, lease_s=2)
    held = HeldLeases(sessions, mid, lease_s=2, max_hold_s=3600)
    held.add(batch)
    with sessions.begin() as s:  # the second row's claim ran out and another drain took it
        s.execute(
            text("UPDATE embedding_queue SET attempts = attempts + 1 WHERE model_id = :m AND chunk_id = :c"),
            {"m": mid, "c": batch[1].chunk_id},
        )
    stop = threading.Event()
    keeper = threading.Thread(target=held.keep, args=(stop,))
    keeper.start()
    time.sleep(3.5)  # past the first lease
    stop.set()
    keeper.join()
    with sessions.begin() as s:
        live = dict(
            s.execute(
                text("SELECT chunk_id, lease_until > now() FROM embedding_queue WHERE model_id = :m"), {"m": mid}
            ).all()
        )
    assert held.renewals >= 2
    assert live == {batch[0].chunk_id: True, batch[1].chunk_id: False}


def test_a_slow_drain_keeps_every_claim_it_holds(sessions) -> None:
    """Forward passes slower than the lease, batches waiting behind them: no held row's lease runs out."""
    model = "test/slow-4d"
    seed(sessions, model, "slow", [[f"d{i} c{j}" for j in range(3)] for i in range(4)])
    mid = model_id(sessions, model)
    cfg = settings(max_batch_tokens=30)  # 3 chunks a batch, 4 batches: 3 leased ahead of the first pass
    cfg.worker.lease_s = 3  # below what the validator allows for parsing: this drain only
    expired: list[int] = []

    def slow(batch: list[str]) -> np.ndarray:
        with sessions.begin() as s:
            expired.append(
                s.execute(
                    text("SELECT count(*) FROM embedding_queue WHERE model_id = :m AND lease_until < now()"),
                    {"m": mid},
                ).scalar()
            )
        time.sleep(2.0)
        return fake_embed(batch)

    stats = embed_pending(model, sessions=sessions, embed=slow, settings=cfg)
    assert stats.batches == 4 and stats.chunks == 12
    assert expired == [0, 0, 0, 0]  # the 4th batch waited ~6 s on a 3 s lease


class Killed(BaseException):
    """Stands in for the process dying mid-batch (segfault, OOM kill): nothing in the drain handles it."""


def test_a_chunk_that_kills_its_worker_fails_alone_and_its_batch_mates_end_ready(sessions) -> None:
    model = "test/killer-4d"
    texts = [[f"d{i} c{j}" + (f" {POISON}" if (i, j) == (1, 1) else "") for j in range(3)] for i in range(4)]
    ids = seed(sessions, model, "killer", texts)
    mid = model_id(sessions, model)
    cfg = settings(max_attempts=3)

    def deadly(batch: list[str]) -> np.ndarray:
        if any(POISON in t for t in batch):
            raise Killed
        return fake_embed(batch)

    deaths = 0
    for _ in range(6):
        try:
            embed_pending(model, sessions=sessions, embed=deadly, settings=cfg)
        except Killed:
            deaths += 1
            expire_leases(sessions, mid)  # the sweeper finds the dead drain's claims after their lease
            continue
        break
    assert deaths == 3  # the first batch, then the killer alone twice: its batch-mates were re-tried singly
    states = doc_rows(sessions, ids)
    assert states.pop(ids[1]) == (
        "failed",
        "gave up after 3 attempts; last error: none recorded; "
        "the last attempt's worker died or timed out (lease expired)",
    )
    assert states == {d: ("ready", None) for d in ids if d != ids[1]}


def test_a_suspect_is_claimed_alone_before_fresh_rows(sessions) -> None:
    model = "test/suspect-4d"
    seed(sessions, model, "suspect", [["a1", "a2"], ["b1", "b2"]])
    mid = model_id(sessions, model)
    with sessions.begin() as s:
        first = store.claim_pending_chunks(s, mid, max_tokens=25, lease_s=300)  # 2 of the 4
    expire_leases(sessions, mid)
    claims = []
    while True:
        with sessions.begin() as s:
            batch = store.claim_pending_chunks(s, mid, max_tokens=10_000, lease_s=300)
        if not batch:
            break
        claims.append(sorted((c.chunk_id, c.attempt) for c in batch))
    suspects = sorted(c.chunk_id for c in first)
    assert claims[:2] == [[(suspects[0], 2)], [(suspects[1], 2)]]  # one at a time, before the fresh rows
    assert len(claims) == 3 and [a for _, a in claims[2]] == [1, 1]  # the fresh ones together
