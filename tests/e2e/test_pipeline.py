"""End to end on the embedded stack: real Postgres+pgvector, Redis and Celery worker processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

REPO = Path(__file__).resolve().parents[2]
COLLECTION = "e2e"

OK_PDFS = [
    "pdf/samplefiles__004-pdflatex-4-pages__pdflatex-4-pages.pdf",
    "pdf/samplefiles__014-outlines__mistitled_outlines_example.pdf",
    "pdf/pymupdf__tests__resources__cython.pdf",
    "pdf/pymupdf__tests__resources__test_4245.pdf",
]
SCANNED = "pdf/pdfjs__test__pdfs__bitmap-halftone.pdf"
ENCRYPTED = "pdf/pdfjs__test__pdfs__auth-event-ef-open.pdf"
BROKEN = ["pdf/pdfjs__test__pdfs__GHOSTSCRIPT-698804-1-fuzzed.pdf", "pdf/pdfjs__test__pdfs__Pages-tree-refs.pdf"]
OTHER = ["other/PyMuPDF__README.md", "other/wikipedia.html", "other/test.docx"]
KNOWN_PDF, KNOWN_PAGE = OK_PDFS[3], 5  # a 16-page novel summary: every page says something else


@pytest.fixture(scope="module")
def ingested(client, corpus_dir: Path):
    """The mix ingested once and waited for; returns (job, counts, per-file rows)."""
    files = [corpus_dir / f for f in [*OK_PDFS, SCANNED, ENCRYPTED, *BROKEN, *OTHER]]
    job = client.ingest(files, collection=COLLECTION, metadata={"suite": "e2e"})
    counts = job.wait(timeout_s=600)
    with client.sessions.begin() as s:
        rows = s.execute(
            text(
                "SELECT d.source, d.state, d.last_error, d.chunk_count, "
                "  (SELECT count(*) FROM chunks c WHERE c.document_id = d.id) AS chunks, "
                "  (SELECT count(*) FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
                "     WHERE c.document_id = d.id) AS embeddings "
                "FROM documents d WHERE d.id = ANY(:ids)"
            ),
            {"ids": job.document_ids},
        ).all()
    by_name = {Path(r.source).name: r for r in rows}
    return job, counts, by_name


def row_for(by_name, rel: str):
    return by_name[Path(rel).name]


def test_every_document_reaches_a_final_state(ingested) -> None:
    job, counts, _ = ingested
    assert set(counts) <= {"ready", "failed"}
    assert sum(counts.values()) == len(job.document_ids) == 11


@pytest.mark.parametrize("rel", [*OK_PDFS, *OTHER])
def test_ok_documents_are_ready_with_one_embedding_per_chunk(ingested, rel: str) -> None:
    row = row_for(ingested[2], rel)
    assert row.state == "ready", row.last_error
    assert row.chunks > 0 and row.chunks == row.chunk_count
    assert row.embeddings == row.chunks


def test_scanned_pdf_is_ready_without_chunks_and_says_why(ingested) -> None:
    row = row_for(ingested[2], SCANNED)
    assert row.state == "ready" and row.chunks == 0
    assert "no text" in row.last_error


def test_encrypted_pdf_fails_naming_the_password(ingested) -> None:
    row = row_for(ingested[2], ENCRYPTED)
    assert row.state == "failed"
    assert "password" in row.last_error


@pytest.mark.parametrize("rel", BROKEN)
def test_broken_pdf_fails_with_a_reason(ingested, rel: str) -> None:
    row = row_for(ingested[2], rel)
    assert row.state == "failed"
    assert re.search(r"no pages|cannot open|extraction failed|page tree", row.last_error), row.last_error


def known_sentence(corpus_dir: Path) -> str:
    """A sentence-long run of words from the middle of the known page, found nowhere else in the PDF."""
    import pymupdf

    with pymupdf.open(corpus_dir / KNOWN_PDF) as doc:
        pages = [" ".join(page.get_text().split()) for page in doc]
    words = pages[KNOWN_PAGE - 1].split()
    middle = len(words) // 2
    sentence = " ".join(words[middle : middle + 18])
    assert " ".join(pages).count(sentence) == 1
    return sentence


@pytest.mark.parametrize("mode", ["hybrid", "vector"])
def test_search_finds_the_known_page(client, ingested, corpus_dir: Path, mode: str) -> None:
    hits = client.search(known_sentence(corpus_dir), collection=COLLECTION, k=3, mode=mode)
    assert any(
        Path(h.source).name == Path(KNOWN_PDF).name and h.page_start <= KNOWN_PAGE <= h.page_end for h in hits
    ), [(Path(h.source).name, h.page_start, h.page_end) for h in hits]


def test_rerank_runs_on_the_rerank_queue(client, ingested, corpus_dir: Path) -> None:
    plain = client.search(known_sentence(corpus_dir), collection=COLLECTION, k=5)
    reranked = client.search(known_sentence(corpus_dir), collection=COLLECTION, k=5, rerank=True)
    assert len(reranked) == 5
    scores = [h.score for h in reranked]
    assert scores == sorted(scores, reverse=True)
    assert {h.chunk_id for h in reranked} <= {
        h.chunk_id for h in client.search(known_sentence(corpus_dir), collection=COLLECTION, k=50)
    }
    assert plain  # the reranker reorders candidates; quality is not tested with a random model


def test_metadata_filter(client, ingested, corpus_dir: Path) -> None:
    query = known_sentence(corpus_dir)
    assert client.search(query, collection=COLLECTION, k=3, where={"suite": "e2e"})
    assert client.search(query, collection=COLLECTION, k=3, where={"suite": "other"}) == []


def row_totals(client) -> tuple[int, int, int]:
    """Rows in documents, chunks and embeddings, over every collection."""
    with client.sessions.begin() as s:
        sql = (
            "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), (SELECT count(*) FROM embeddings)"
        )
        return tuple(s.execute(text(sql)).one())


def test_reingest_creates_nothing_and_finishes_at_once(client, ingested, corpus_dir: Path) -> None:
    job, counts, _ = ingested
    before = row_totals(client)
    files = [corpus_dir / f for f in [*OK_PDFS, SCANNED, ENCRYPTED, *BROKEN, *OTHER]]
    again = client.ingest(files, collection=COLLECTION)
    assert again.created == 0
    assert sorted(again.document_ids) == sorted(job.document_ids)
    assert again.wait(timeout_s=5) == counts
    assert row_totals(client) == before


def readme_sql_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    return re.findall(r"```sql\n(.*?)```", readme, flags=re.S)


def test_readme_sql_runs(client, ingested, corpus_dir: Path) -> None:
    from docpipe.search import vector_literal

    blocks = readme_sql_blocks()
    assert len(blocks) >= 2
    query_vec = vector_literal(client.embedder(client.settings.embed.model).embed_query(known_sentence(corpus_dir)))
    raw = client.engine.raw_connection()
    try:
        cur = raw.cursor()
        for sql in blocks:
            sql = sql.replace("'docs'", f"'{COLLECTION}'").replace('"team": "infra"', '"suite": "e2e"')
            cur.execute(sql.replace("$1", "%s"), (query_vec,))
            rows = cur.fetchall()
            assert rows, sql
            names = [d.name for d in cur.description]
            assert ("source" in names and "distance" in names) or "page_start" in names
            assert any(Path(r[0]).name == Path(KNOWN_PDF).name for r in rows), rows
    finally:
        raw.close()


def run_cli(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DATABASE_URL": stack.database_url,
        "REDIS_URL": stack.redis_url,
        "DOCPIPE_DATA_DIR": str(stack.settings.data_dir),
        "DOCPIPE_MODEL_CACHE": str(stack.settings.model_cache_dir),
    }
    result = subprocess.run(
        [sys.executable, "-m", "docpipe.cli", *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_cli_search_json(stack, ingested, corpus_dir: Path) -> None:
    out = run_cli(stack, "search", known_sentence(corpus_dir), "--collection", COLLECTION, "-k", "3", "--json")
    hits = json.loads(out.stdout)
    assert len(hits) == 3
    assert {"text", "source", "page_start", "page_end", "score"} <= set(hits[0])


def test_cli_ingest_wait_and_status(stack, corpus_dir: Path) -> None:
    out = run_cli(stack, "ingest", str(corpus_dir / "other" / "qq.html"), "--collection", "cli", "--wait")
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts == {"ready": 1}
    status = json.loads(run_cli(stack, "status", "--json").stdout)
    assert status["cli"]["documents"] == {"ready": 1}
    assert status["cli"]["chunks"] == status["cli"]["embeddings"] > 0


def test_cli_errors_are_clear(stack, tmp_path: Path) -> None:
    missing = run_cli(stack, "ingest", str(tmp_path / "nope.pdf"), check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    empty = run_cli(stack, "ingest", str(tmp_path), check=False)
    assert empty.returncode == 2 and "no supported documents" in empty.stderr


def test_workers_serve_prometheus_metrics(stack, ingested) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def scrape(port: int) -> dict[str, float]:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return {
            s.name + str(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
        }

    port = stack.settings.worker.metrics_port
    parse, embed = scrape(port), scrape(port + 1)
    assert parse["docpipe_documents_total[('outcome', 'embedding')]"] >= len(OK_PDFS)
    assert parse["docpipe_documents_total[('outcome', 'failed')]"] >= 3
    assert parse["docpipe_parse_seconds_count[]"] >= 1  # tasks, not documents: small documents share tasks
    assert embed["docpipe_chunks_embedded_total[]"] > 0
    assert embed["docpipe_padded_tokens_total[]"] >= embed["docpipe_tokens_embedded_total[]"] > 0


def test_parse_processes_yield_the_cpu_to_the_embedder(stack, ingested) -> None:
    import psutil

    pool = psutil.Process(stack.worker("parse").proc.pid).children()
    embed = psutil.Process(stack.worker("embed").proc.pid)
    assert any(p.nice() >= stack.settings.worker.parse_nice for p in pool)  # the ones that parsed
    assert embed.nice() == 0
    autogroup = Path(f"/proc/{pool[0].pid}/autogroup")
    if autogroup.exists():  # each worker is a session of its own: the kernel shares CPU between sessions first
        assert autogroup.read_text().split()[-1] == str(stack.settings.worker.parse_nice)
        assert Path(f"/proc/{embed.pid}/autogroup").read_text().split()[-1] == "0"
