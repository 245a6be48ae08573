"""Hostile documents and hostile neighbours, on the real stack: one generated input per class.

Every input is made here (no checked-in binaries); each ends in its stated outcome, the ordinary
document ingested beside them is unaffected, and every worker is still the same live process.
"""

from __future__ import annotations

import io
import math
import os
import random
import time
from pathlib import Path

import docx
import psycopg
import pytest
import redis
from sqlalchemy import text

from docpipe import services
from docpipe.cli import print_hits

GOOD = "# Lighthouses\n\nThe keeper trimmed the lamp every evening and logged the weather.\n"


def docx_flood(chars: int) -> bytes:
    """A small .docx (deflate squeezes repetition ~1000:1) whose text is `chars` characters."""
    document = docx.Document()
    line = "flood " * 200
    for _ in range(chars // len(line) + 1):
        document.add_paragraph(line)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def rows_by_name(client, ids: list[int]) -> dict[str, tuple[str, str | None, str]]:
    with client.sessions.begin() as s:
        rows = s.execute(
            text(
                "SELECT d.source, d.state, d.last_error, coalesce(string_agg(c.text, ' '), '') AS body "
                "FROM documents d LEFT JOIN chunks c ON c.document_id = d.id "
                "WHERE d.id = ANY(:ids) GROUP BY d.id"
            ),
            {"ids": ids},
        ).all()
    return {Path(r.source).name: (r.state, r.last_error, r.body) for r in rows}


def worker_pids(stack) -> dict[str, int]:
    return {spec.name: spec.proc.pid for spec in stack.workers if spec.proc is not None and spec.proc.poll() is None}


@pytest.mark.timeout(900)
def test_hostile_documents_fail_or_pass_alone(stack, client, tmp_path: Path) -> None:
    before = worker_pids(stack)
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "good.md").write_text(GOOD)
    inputs = {
        "dots.txt": ("x" + "." * 400_000).encode(),  # sentence splitter: minutes before
        "heading.md": ("# a" + " " * 300_000 + "b\n\nbody text").encode(),  # Markdown heading rule
        "longword.txt": ("start " + "y" * 1_000_000 + " end").encode(),  # one 1 MB [UNK] word
        "random.txt": random.Random(10).randbytes(200_000),  # binary, not text
        "controls.txt": "bidi \u202eevil\u202c, C1 \x85\x9b, BOM \ufeff, bell \x07 end".encode(),
        "mentions-pdf.md": b"# Notes\n\nA PDF starts with\n\n%PDF-1.7\n\nand that is all.\n",
        "utf16.txt": "\x00Grüße aus Köln, UTF-16 without a byte-order mark.".encode("utf-16-le"),
        "flood.docx": docx_flood(client.settings.parse.max_chars + 100_000),
    }
    for name, data in inputs.items():
        (folder / name).write_bytes(data)
    with open(os.fsencode(folder) + b"/caf\xe9.txt", "wb") as fh:  # a latin-1 file name
        fh.write(b"A note whose name is not UTF-8.")
    os.mkfifo(folder / "pipe.txt")  # opening it would hang the ingest
    secret = tmp_path / "secret.txt"
    secret.write_text("private key material outside the folder")
    (folder / "leak.txt").symlink_to(secret)

    started = time.monotonic()
    job = client.ingest(folder, collection="hostile")
    counts = job.wait(timeout_s=600)
    got = rows_by_name(client, job.document_ids)
    print(f"hostile ingest: {counts} in {time.monotonic() - started:.1f} s")
    for name, (state, reason, body) in sorted(got.items()):
        print(f"  {name}: {state} {reason or ''} ({len(body)} chars)")

    assert got["good.md"][0] == "ready" and "keeper trimmed the lamp" in got["good.md"][2]
    for name in ("dots.txt", "heading.md", "longword.txt", "controls.txt", "mentions-pdf.md", "utf16.txt"):
        assert got[name][0] == "ready", (name, got[name][1])
    assert max(len(body) for body in (got["longword.txt"][2], got["heading.md"][2])) < 10_000
    assert got["random.txt"][0] == "failed" and "binary data" in got["random.txt"][1]
    assert got["flood.docx"][0] == "failed" and "parse.max_chars" in got["flood.docx"][1]
    body = got["controls.txt"][2]
    assert "evil" in body and not {"\u202e", "\x85", "\x9b", "\ufeff", "\x07"} & set(body)
    assert "%PDF-1.7" in got["mentions-pdf.md"][2]
    assert "Grüße aus Köln" in got["utf16.txt"][2]
    assert got["caf\\xe9.txt"][0] == "ready"
    assert "pipe.txt" not in got and "leak.txt" not in got and "secret.txt" not in got
    with client.sessions.begin() as s:
        leaked = s.execute(text("SELECT count(*) FROM chunks WHERE text LIKE '%private key material%'")).scalar_one()
    assert leaked == 0
    assert worker_pids(stack) == before  # no worker died or was replaced


def test_bad_metadata_and_a_named_fifo_are_refused_before_storing(client, tmp_path: Path) -> None:
    from docpipe.errors import ConfigError

    (tmp_path / "a.md").write_text(GOOD)
    with pytest.raises(ValueError, match="NaN"):
        client.ingest(tmp_path, collection="hostile-meta", metadata={"score": math.nan})
    with pytest.raises(ValueError, match="NUL"):
        client.ingest(tmp_path, collection="hostile-meta", metadata={"note": "a\x00b"})
    with client.sessions.begin() as s:
        stored = s.execute(
            text("SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id WHERE c.name = :n"),
            {"n": "hostile-meta"},
        ).scalar_one()
    assert stored == 0
    os.mkfifo(tmp_path / "named.txt")
    with pytest.raises(ConfigError, match="FIFO, not a regular file"):
        client.ingest(tmp_path / "named.txt", collection="hostile-meta")


def test_queries_are_capped_and_markup_prints_literally(client, capsys: pytest.CaptureFixture[str]) -> None:
    job = client.ingest_bytes(
        [
            (
                "markup.md",
                b"# Odd\n\nA chunk with [/nope] and [bold]markup[/bold] \x1b]0;title\x07 inside.",
                "text/markdown",
            )
        ],
        collection="hostile-cli",
    )
    assert job.wait(timeout_s=300) == {"ready": 1}
    search = client.settings.search
    with pytest.raises(ValueError, match=r"search\.max_k"):
        client.search("markup", collection="hostile-cli", k=search.max_k + 1)
    with pytest.raises(ValueError, match=r"search\.max_query_chars"):
        client.search("x" * (search.max_query_chars + 1), collection="hostile-cli")
    hits = client.search("nope markup", collection="hostile-cli", k=3)
    print_hits(hits)
    out = capsys.readouterr().out
    assert "[/nope]" in out and "\x1b" not in out


def test_another_local_user_is_refused_by_both_servers(stack) -> None:
    """Without the generated passwords neither server lets anyone in; the pipeline's role is no superuser."""
    if stack.postgres is None or stack.redis is None:
        pytest.skip("external servers")
    port = stack.postgres.port
    for url in (
        f"postgresql://postgres@127.0.0.1:{port}/docpipe",
        f"postgresql://docpipe:guess@127.0.0.1:{port}/docpipe",
    ):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=10).close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=stack.redis.port).ping()
    with psycopg.connect(stack.database_url.replace("+psycopg", ""), autocommit=True) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")
    data = stack.settings.data_dir
    for path in (data, data / "postgres.secret.json", data / "redis" / "password", data / "stack.json"):
        assert path.stat().st_mode & 0o077 == 0, path  # nothing for group or others
    if os.geteuid() == 0:  # the server runs from root's private copy, not from folders opened above the venv
        with psycopg.connect(stack.database_url.replace("+psycopg", ""), autocommit=True) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            binary = Path(os.readlink(f"/proc/{backend}/exe"))  # while the backend lives
        assert services.PG_INSTALL_ROOT in binary.parents, binary
        for path in (binary, binary.parent, binary.parent.parent):
            info = path.stat()
            assert info.st_uid == 0 and info.st_mode & 0o022 == 0, path  # only root may change it
