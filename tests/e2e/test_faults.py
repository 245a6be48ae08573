"""Nothing lost, nothing twice: faults injected into a running stack, compared with a clean run.

Each test starts its own embedded stack, ingests the same real documents,
injects one fault mid-run and checks afterwards: every document final, the
clean run's chunk and embedding counts, no duplicate (chunk, model) rows and
the clean run's search results.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from docpipe.client import Client
from docpipe.stack import Stack
from tests.conftest import stack_settings

FAULT_DOCS = [
    "pdf/pdfjs__test__pdfs__issue1350.pdf",
    "pdf/pymupdf__tests__resources__test_4180.pdf",
    "pdf/pymupdf__tests__resources__cython.pdf",
    "pdf/pymupdf__tests__resources__test_4245.pdf",
    "pdf/pymupdf__tests__resources__test_4751.pdf",
    "pdf/pdfjs__test__pdfs__file_pdfjs_test.pdf",
    "pdf/pdfjs__test__pdfs__standard_fonts.pdf",
    "other/PyMuPDF__README.md",
    "other/wikipedia.html",
    "other/test.docx",
]
QUERIES = ["install the package with pip", "page tree and outlines", "font encoding of the text"]
FAULT_LEASE_S = 20  # short leases so the sweeper takes back a dead worker's claims quickly
WAIT_S = 420


def start_stack(tmp_path: Path, model_cache: Path, **worker: object) -> Stack:
    """A fresh stack. fp32 vectors: int8 activations are quantised per batch, so a chunk's int8
    vector depends on its batch mates, and batches differ between a clean and a faulty run."""
    worker = {"lease_s": FAULT_LEASE_S, **worker}
    settings = stack_settings(tmp_path / "stack", model_cache, backend="torch-fp32", **worker)
    stack = Stack(settings, redis_persist=False)
    stack.start()
    return stack


def snapshot(client: Client, document_ids: list[int]) -> dict:
    """What a user can observe: states, counts, duplicates, search results (by source and page)."""
    with client.sessions.begin() as s:
        states = dict(
            s.execute(text("SELECT source, state FROM documents WHERE id = ANY(:i)"), {"i": document_ids}).all()
        )
        chunks, embeddings, duplicates = s.execute(
            text(
                "SELECT (SELECT count(*) FROM chunks), (SELECT count(*) FROM embeddings), "
                "(SELECT count(*) - count(DISTINCT (chunk_id, model_id)) FROM embeddings)"
            )
        ).one()
    results = {q: exact_top(client, q) for q in QUERIES}
    return {
        "states": {Path(k).name: v for k, v in states.items()},
        "chunks": chunks,
        "embeddings": embeddings,
        "duplicates": duplicates,
        "search": results,
    }


def exact_top(client: Client, query: str, k: int = 5) -> list[tuple[str, int, str, float]]:
    """Exact nearest chunks (the README's `<=>` query): independent of HNSW build order and chunk ids."""
    from docpipe.search import vector_literal

    vec = vector_literal(client.embedder(client.settings.embed.model).embed_query(query))
    with client.sessions.begin() as s:
        rows = s.execute(
            text(
                "SELECT source, page_start, text, embedding <=> CAST(:v AS vector) AS distance "
                "FROM docpipe_chunks WHERE collection = 'faults' ORDER BY distance LIMIT :k"
            ),
            {"v": vec, "k": k},
        ).all()
    return [(Path(r.source).name, r.page_start, r.text[:60], r.distance) for r in rows]


def run_with_fault(
    tmp_path: Path,
    model_cache: Path,
    corpus_dir: Path,
    fault: Callable[[Stack, Client, list[int]], None],
    check: Callable[[Stack, Client], None] | None = None,
    **worker,
) -> dict:
    """Ingest FAULT_DOCS on a fresh stack, call `fault` mid-run, supervise until all final, snapshot.

    `check` runs against the live stack at the end, for assertions beyond the snapshot.
    """
    stack = start_stack(tmp_path, model_cache, **worker)
    try:
        with Client(stack.database_url, stack.redis_url, settings=stack.settings) as client:
            job = client.ingest([corpus_dir / f for f in FAULT_DOCS], collection="faults")
            fault(stack, client, job.document_ids)
            deadline = time.monotonic() + WAIT_S
            while not job.done():
                stack.supervise_once()  # what `docpipe up` does: restart dead workers
                assert time.monotonic() < deadline, f"not finished: {job.counts()}"
                time.sleep(0.5)
            if check is not None:
                check(stack, client)
            return snapshot(client, job.document_ids)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def clean(tmp_path_factory, model_cache: Path, corpus_dir: Path) -> dict:
    return run_with_fault(tmp_path_factory.mktemp("clean"), model_cache, corpus_dir, lambda *_: None)


def assert_same_as_clean(result: dict, clean: dict) -> None:
    assert set(result["states"].values()) <= {"ready", "failed"}
    assert result["states"] == clean["states"]
    assert result["duplicates"] == 0
    assert (result["chunks"], result["embeddings"]) == (clean["chunks"], clean["embeddings"])
    for query, hits in result["search"].items():  # same hits; order may differ only within float noise
        expected = clean["search"][query]
        assert {h[:3] for h in hits} == {h[:3] for h in expected}, query
        assert [h[3] for h in hits] == pytest.approx([h[3] for h in expected], abs=1e-4), query


def wait_for(condition: Callable[[], bool], *, timeout_s: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def count(client: Client, sql: str, **params) -> int:
    with client.sessions.begin() as s:
        return int(s.execute(text(sql), params).scalar_one())


def kill_group(proc) -> None:
    """SIGKILL a worker and everything it started (pool children, parser sandbox)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_clean_run_is_complete(clean: dict) -> None:
    assert all(state == "ready" for state in clean["states"].values()), clean["states"]
    assert clean["chunks"] == clean["embeddings"] > 0 and clean["duplicates"] == 0


def test_sigkill_parse_worker_mid_document(tmp_path, model_cache, corpus_dir, clean) -> None:
    def fault(stack: Stack, client: Client, ids: list[int]) -> None:
        wait_for(lambda: count(client, "SELECT count(*) FROM documents WHERE state = 'parsing'") > 0, what="parsing")
        kill_group(stack.worker("parse").proc)

    assert_same_as_clean(run_with_fault(tmp_path, model_cache, corpus_dir, fault), clean)


def test_sigkill_embed_worker_mid_batch(tmp_path, model_cache, corpus_dir, clean) -> None:
    def fault(stack: Stack, client: Client, ids: list[int]) -> None:
        wait_for(
            lambda: count(client, "SELECT count(*) FROM embedding_queue WHERE lease_until > now()") > 0,
            what="a leased embed batch",
        )
        kill_group(stack.worker("embed").proc)

    assert_same_as_clean(run_with_fault(tmp_path, model_cache, corpus_dir, fault), clean)


def test_redis_restart_loses_messages(tmp_path, model_cache, corpus_dir, clean) -> None:
    def fault(stack: Stack, client: Client, ids: list[int]) -> None:
        assert stack.redis is not None
        stack.redis.proc.kill()  # no persistence: every queued message is gone
        stack.redis.proc.wait()
        time.sleep(1)
        stack.redis.start()

    assert_same_as_clean(run_with_fault(tmp_path, model_cache, corpus_dir, fault), clean)


def test_postgres_restart_drops_connections(tmp_path, model_cache, corpus_dir, clean) -> None:
    def fault(stack: Stack, client: Client, ids: list[int]) -> None:
        assert stack.postgres is not None
        wait_for(lambda: count(client, "SELECT count(*) FROM chunks") > 0, what="first chunks")
        stack.postgres.stop()
        time.sleep(2)
        stack.postgres.start()

    assert_same_as_clean(run_with_fault(tmp_path, model_cache, corpus_dir, fault), clean)


def test_same_document_enqueued_twice_at_once(tmp_path, model_cache, corpus_dir, clean) -> None:
    def fault(stack: Stack, client: Client, ids: list[int]) -> None:
        as_batch, one_each = [ids], [[i] for i in ids]  # batch and single claims race for the same documents
        tasks = (as_batch, one_each, as_batch)
        threads = [threading.Thread(target=client.task_queue.enqueue_parse, args=(t,)) for t in tasks]
        threads += [
            threading.Thread(
                target=client.ingest, args=([corpus_dir / f for f in FAULT_DOCS],), kwargs={"collection": "faults"}
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    result = run_with_fault(tmp_path, model_cache, corpus_dir, fault)
    assert len(result["states"]) == len(FAULT_DOCS)
    assert_same_as_clean(result, clean)


def test_parser_crash_fails_only_the_poison_document(tmp_path, model_cache, corpus_dir, clean, monkeypatch) -> None:
    monkeypatch.setenv("DOCPIPE_SANDBOX_TEST_HOOKS", "1")  # inherited by the workers' parser sandboxes
    poison: list[int] = []

    def fault(stack: Stack, client: Client, ids: list[int]) -> None:
        with client.sessions.begin() as s:
            coll = s.execute(text("SELECT id FROM collections WHERE name = 'faults'")).scalar_one()
            poison.append(
                s.execute(
                    text(
                        "INSERT INTO documents (collection_id, source, sha256, media_type, size_bytes, content) "
                        "VALUES (:c, 'poison.pdf', :sha, 'application/x-docpipe-test-crash', 4, 'boom') RETURNING id"
                    ),
                    {"c": coll, "sha": hashlib.sha256(b"poison").digest()},
                ).scalar_one()
            )
        client.task_queue.enqueue_parse([poison])

    def check(stack: Stack, client: Client) -> None:
        wait_for(
            lambda: (
                count(client, "SELECT count(*) FROM documents WHERE id = :d AND state = 'failed'", d=poison[0]) == 1
            ),
            what="the poison document to fail",
        )
        with client.sessions.begin() as s:
            reason = s.execute(text("SELECT last_error FROM documents WHERE id = :d"), {"d": poison[0]}).scalar_one()
        assert "parser crashed (SIGSEGV)" in reason
        assert stack.worker("parse").restarts == 0  # the worker survived; only the sandbox child died

    assert_same_as_clean(run_with_fault(tmp_path, model_cache, corpus_dir, fault, check), clean)
