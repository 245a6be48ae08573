"""Back-pressure: 10,000 small documents in one call; ids only on the broker, nothing lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

pytestmark = pytest.mark.slow
N = 10_000


def test_ten_thousand_small_documents(stack, client, tmp_path: Path) -> None:
    words = ["harbour", "lantern", "granite", "meadow", "cobalt", "thistle", "ember", "quartz"]
    for i in range(N):
        (tmp_path / f"note-{i:05d}.txt").write_text(
            f"Note {i}: {words[i % 8]} {words[(i // 8) % 8]} record {i * 7919}.\n"
        )
    started = time.perf_counter()
    job = client.ingest(tmp_path, collection="bulk")
    enqueue_s = time.perf_counter() - started
    broker = redis.Redis.from_url(stack.redis_url)
    used_mib = broker.info("memory")["used_memory"] / 2**20
    with client.task_queue.app.connection_for_read() as conn:
        waiting = conn.default_channel.queue_declare("parse").message_count
    print(
        f"\nstored and enqueued {N} documents in {enqueue_s:.1f} s ({N / enqueue_s:.0f} docs/s); "
        f"broker memory {used_mib:.1f} MiB, parse queue {waiting}"
    )
    assert job.created == N and len(set(job.document_ids)) == N
    assert used_mib < 128  # messages carry ids, not bytes
    started = time.perf_counter()
    counts = job.wait(timeout_s=2400, poll_s=2)
    print(f"processed {N} documents in {time.perf_counter() - started:.0f} s: {counts}")
    assert counts == {"ready": N}
    with client.sessions.begin() as s:
        chunks, vectors = s.execute(
            text(
                "SELECT count(c.id), count(e.chunk_id) FROM chunks c JOIN documents d ON d.id = c.document_id "
                "JOIN collections k ON k.id = d.collection_id LEFT JOIN embeddings e ON e.chunk_id = c.id "
                "WHERE k.name = 'bulk'"
            )
        ).one()
    assert chunks == vectors == N
