"""Bad input at the edges, failed-document operations and broker settings, on the running stack."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from docpipe.errors import ConfigError
from docpipe.workers.queues import PARSE_PART_TASK, PARSE_TASK


def states_by_name(client, job) -> dict[str, tuple[str, str | None]]:
    with client.sessions.begin() as s:
        rows = s.execute(
            text("SELECT source, state, last_error FROM documents WHERE id = ANY(:i)"), {"i": job.document_ids}
        ).all()
    return {Path(r.source).name: (r.state, r.last_error) for r in rows}


def test_odd_files_each_get_a_clear_outcome(client, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "nul.txt").write_bytes(b"NUL bytes \x00 inside\x00 a plain text file about lighthouses.\n")
    (tmp_path / "binary.xyz").write_bytes(b"\x89\x00\x01 not a document")
    (tmp_path / "fake.pdf").write_bytes(b"%PDF-1.7\n this is not really a PDF \n%%EOF")
    (tmp_path / "latin1.txt").write_bytes("café crème brûlée — naïve façade".encode("cp1252"))
    job = client.ingest(sorted(tmp_path.iterdir()), collection="edges")
    job.wait(timeout_s=180)
    got = states_by_name(client, job)
    assert got["empty.txt"] == ("failed", "empty file (0 bytes)")
    assert got["nul.txt"][0] == "ready"
    assert got["binary.xyz"][0] == "failed" and "unsupported file type" in got["binary.xyz"][1]
    assert got["fake.pdf"][0] == "failed" and got["fake.pdf"][1]
    assert got["latin1.txt"][0] == "ready"
    with client.sessions.begin() as s:
        stored = s.execute(
            text(
                "SELECT string_agg(c.text, ' ') FROM chunks c JOIN documents d ON d.id = c.document_id "
                "WHERE d.source LIKE '%nul.txt'"
            )
        ).scalar_one()
    assert "lighthouses" in stored and "\x00" not in stored


def test_directory_walk_skips_unsupported_files(client, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\nSome words about walking directories.\n")
    (tmp_path / "b.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden.md").write_text("# hidden\n")
    job = client.ingest(tmp_path, collection="edges-walk")
    assert job.skipped == 1 and len(job.document_ids) == 1


def test_file_over_the_size_limit_fails_without_storing_it(client, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (client.settings.parse.max_bytes + 1))
    job = client.ingest(big, collection="edges")
    state, reason = states_by_name(client, job)["big.txt"]
    assert state == "failed" and "too large" in reason
    with client.sessions.begin() as s:
        assert s.execute(
            text("SELECT size_bytes, octet_length(content) FROM documents WHERE id = :i"), {"i": job.document_ids[0]}
        ).one() == (big.stat().st_size, 0)


@pytest.mark.parametrize("name", ["x'; DROP TABLE documents; --", "", "../etc", "a" * 200, "naïve"])
def test_crafted_collection_names_are_refused(client, tmp_path: Path, name: str) -> None:
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="invalid collection name"):
        client.ingest(tmp_path / "a.txt", collection=name)
    with pytest.raises(ValueError, match="invalid collection name"):
        client.search("hello", collection=name)


def test_crafted_metadata_filters_are_plain_data(client, tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("Metadata filters are parameterised JSON containment.")
    client.ingest(tmp_path / "m.txt", collection="edges-meta", metadata={"k'; DROP TABLE chunks; --": "v"}).wait(
        timeout_s=120
    )
    hostile = {"k'; DROP TABLE chunks; --": "v"}
    assert len(client.search("metadata filters", collection="edges-meta", where=hostile)) == 1
    assert client.search("metadata filters", collection="edges-meta", where={"') OR 1=1 --": 1}) == []
    with client.sessions.begin() as s:
        assert s.execute(text("SELECT count(*) FROM chunks")).scalar_one() > 0


def test_unknown_collection_and_empty_query(client) -> None:
    with pytest.raises(ConfigError, match="unknown collection"):
        client.search("anything", collection="does-not-exist")
    with pytest.raises(ValueError, match="empty query"):
        client.search("   ", collection="edges")


def test_failed_documents_can_be_listed_retried_and_purged(client, tmp_path: Path, corpus_dir: Path) -> None:
    encrypted = corpus_dir / "pdf" / "pdfjs__test__pdfs__auth-event-ef-open.pdf"
    job = client.ingest([encrypted], collection="edges-ops")
    job.wait(timeout_s=120)
    failed = client.failed("edges-ops")
    assert [Path(d.source).name for d in failed] == [encrypted.name]
    assert "password" in failed[0].reason and failed[0].attempts == 1
    assert client.retry_failed("edges-ops") == 1
    job.wait(timeout_s=120)
    again = client.failed("edges-ops")
    assert again[0].attempts == 1 and "password" in again[0].reason  # a fresh attempt, same permanent reason
    assert client.purge_failed("edges-ops") == 1
    assert client.failed("edges-ops") == []
    assert client.ingest([encrypted], collection="edges-ops").created == 1  # purged bytes can come back


def test_broker_refuses_pickle_and_never_evicts(stack, client) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    app = client.task_queue.app
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.broker_transport_options["visibility_timeout"] > app.conf.task_time_limit
    app.send_task("docpipe.parse", args=(10**12,), serializer="pickle", queue="parse")
    log = stack.log_dir / "parse.log"
    deadline = time.monotonic() + 60
    while "Refusing to deserialize untrusted content of type pickle" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the parse worker did not refuse a pickle message"
        time.sleep(0.2)


def test_a_started_documents_parts_are_served_before_new_documents(client) -> None:
    app = client.task_queue.app
    queue = "priority-probe"  # not the parse queue: the workers would take the messages first
    app.send_task(PARSE_TASK, args=(1,), queue=queue)  # each message takes its priority from the task's route
    app.send_task(PARSE_PART_TASK, args=(2, 1, 1), queue=queue)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert channel.queue_declare(queue).message_count == 2  # counted across the priority lists
        served = [channel.basic_get(queue).headers["task"] for _ in range(2)]
    assert served == [PARSE_PART_TASK, PARSE_TASK]


def test_status_counts(client) -> None:
    status = client.status()
    assert all({"model", "documents", "chunks", "embeddings"} <= set(v) for v in status.values())
    json.dumps(status)
