"""The whole shared corpus through the running stack: no worker deaths, every file where MANIFEST says."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import free_port_pair, stack_settings

pytestmark = pytest.mark.slow

# ok_little_text files (scans, image-heavy) that yield chunks: 87 of 126 from their text layer alone; with
# OCR of every page 98 (`python -m docpipe.bench.ocr`). Here only first pages are OCR'd; the floor leaves
# room for pages over the test stack's short page limit on a loaded machine, but needs OCR to add at least one.
LITTLE_TEXT_WITH_CHUNKS = 88
CAUSE = re.compile(r"password|no pages|cannot open|extraction failed|page tree|corrupt|invalid|format error", re.I)


@pytest.fixture(scope="module")
def corpus_stack(tmp_path_factory: pytest.TempPathFactory, model_cache: Path):
    """A stack like the session's that OCRs only the first page of a document: the corpus holds thousands of
    scanned pages (hours of OCR on two cores); what this test checks is every file's outcome."""
    from docpipe.client import Client
    from docpipe.stack import Stack

    settings = stack_settings(tmp_path_factory.mktemp("corpus-stack"), model_cache, metrics_port=free_port_pair())
    settings = settings.model_copy(update={"ocr": settings.ocr.model_copy(update={"max_pages": 1})})
    with (
        Stack(settings, redis_persist=False) as running,
        Client(running.database_url, running.redis_url, settings=running.settings) as client,
    ):
        yield running, client


@pytest.mark.timeout(2400)
def test_whole_corpus(corpus_stack, corpus_dir: Path, manifest: list[dict[str, str]]) -> None:
    stack, client = corpus_stack
    files = [corpus_dir / row["file"] for row in manifest]
    job = client.ingest(files, collection="corpus")
    assert job.skipped == 0 and len(job.document_ids) == len(files)
    job.wait(timeout_s=1800)
    with client.sessions.begin() as s:
        rows = s.execute(
            text(
                "SELECT source, state, last_error, chunk_count, "
                "  EXISTS (SELECT 1 FROM chunks c WHERE c.document_id = documents.id AND c.ocr) AS ocr "
                "FROM documents WHERE id = ANY(:i)"
            ),
            {"i": job.document_ids},
        ).all()
    outcome = {Path(r.source).resolve(): r for r in rows}
    table, problems = [], []
    for row in manifest:
        got = outcome[(corpus_dir / row["file"]).resolve()]
        table.append(
            f"{row['file'][:70]:<70} {row['class']:<15} {got.state:<7} {got.chunk_count or 0:>5} "
            f"{(got.last_error or '')[:70]}"
        )
        klass = row["class"]
        if klass.startswith(("ok_", "other_")) and got.state != "ready":
            problems.append(f"{row['file']}: {klass} ended {got.state}: {got.last_error}")
        if klass == "ok_text" and not got.chunk_count:
            problems.append(f"{row['file']}: ok_text without chunks")
        if klass in ("encrypted", "broken") and (got.state != "failed" or not CAUSE.search(got.last_error or "")):
            problems.append(f"{row['file']}: {klass} ended {got.state}: {got.last_error}")
    little = [outcome[(corpus_dir / r["file"]).resolve()] for r in manifest if r["class"] == "ok_little_text"]
    with_chunks = sum(1 for got in little if got.chunk_count)
    if with_chunks < LITTLE_TEXT_WITH_CHUNKS or not any(got.ocr for got in little):
        problems.append(f"ok_little_text: {with_chunks} with chunks (want {LITTLE_TEXT_WITH_CHUNKS}, some by OCR)")
    print("\n" + "\n".join(table))
    print(Counter((row["class"], outcome[(corpus_dir / row["file"]).resolve()].state) for row in manifest))
    assert not problems, "\n".join(problems)
    assert all(w.restarts == 0 and w.proc.poll() is None for w in stack.workers), "a worker died"
