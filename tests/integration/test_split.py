"""A long PDF split into page ranges chunks exactly like the same PDF parsed in one piece."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import text

from docpipe import processing, store
from docpipe.config import ParseLimits, Settings
from docpipe.parse import SandboxedParser

LONG_PDF = "pdf/pdfjs__test__pdfs__freeculture.pdf"  # 352 pages


@pytest.fixture(scope="module")
def parser():
    with SandboxedParser(ParseLimits(timeout_s=120)) as p:
        yield p


def queued_document(sessions, collection: str, data: bytes) -> int:
    with sessions.begin() as s:
        coll = store.ensure_collection(s, collection, model="sentence-transformers/all-MiniLM-L6-v2", dim=384)
        [(doc_id, _)] = store.insert_documents(
            s,
            coll.id,
            [store.NewDocument("/free.pdf", hashlib.sha256(data).digest(), "application/pdf", data, len(data), {})],
        )
    return doc_id


def chunk_rows(sessions, doc_id: int) -> list[tuple]:
    with sessions.begin() as s:
        return [
            tuple(r)
            for r in s.execute(
                text(
                    "SELECT ordinal, text, token_count, page_start, page_end, heading_path FROM chunks "
                    "WHERE document_id = :d ORDER BY ordinal"
                ),
                {"d": doc_id},
            ).all()
        ]


def test_split_pdf_chunks_like_the_whole(sessions, parser, corpus_dir: Path, tmp_path: Path, monkeypatch) -> None:
    data = (corpus_dir / LONG_PDF).read_bytes()
    whole_settings = Settings(data_dir=tmp_path, parse=ParseLimits(split_pages=0))
    whole_id = queued_document(sessions, "split-whole", data)
    whole = processing.parse_document(whole_id, sessions=sessions, parser=parser, settings=whole_settings)
    assert whole.state == "embedding" and not whole.parts

    split_settings = Settings(data_dir=tmp_path, parse=ParseLimits(split_pages=64))
    split_id = queued_document(sessions, "split-parts", data)
    first = processing.parse_document(split_id, sessions=sessions, parser=parser, settings=split_settings)
    assert first.state == "split" and first.parts == [1, 2, 3, 4, 5]
    reads: list[int] = []
    monkeypatch.setattr(store, "document_content", lambda s, doc_id: reads.append(doc_id) or b"")
    outcomes = [
        processing.parse_part(split_id, part, first.attempt, sessions=sessions, parser=parser, settings=split_settings)
        for part in reversed(first.parts)  # any order; the last to finish chunks
    ]
    assert [o.state for o in outcomes] == ["parsing"] * 4 + ["embedding"]
    assert reads == []  # the sandbox child kept the bytes from the first range: no range read them again
    monkeypatch.undo()
    again = processing.parse_part(split_id, 3, first.attempt, sessions=sessions, parser=parser, settings=split_settings)
    assert again.state == "skipped"  # a redelivered part message changes nothing

    assert chunk_rows(sessions, split_id) == chunk_rows(sessions, whole_id)
    with sessions.begin() as s:
        row = s.execute(text("SELECT page_count, state FROM documents WHERE id = :d"), {"d": split_id}).one()
        parts_left = s.execute(text("SELECT count(*) FROM document_parts WHERE document_id = :d"), {"d": split_id})
        assert tuple(row) == (352, "embedding") and parts_left.scalar_one() == 0


def test_part_of_a_superseded_attempt_is_ignored(sessions, parser, corpus_dir: Path, tmp_path: Path) -> None:
    data = (corpus_dir / LONG_PDF).read_bytes()
    settings = Settings(data_dir=tmp_path, parse=ParseLimits(split_pages=100))
    doc_id = queued_document(sessions, "split-stale", data)
    first = processing.parse_document(doc_id, sessions=sessions, parser=parser, settings=settings)
    with sessions.begin() as s:  # the lease expires and the sweeper's message starts attempt 2
        s.execute(text("UPDATE documents SET lease_until = now() - interval '1 s' WHERE id = :d"), {"d": doc_id})
    second = processing.parse_document(doc_id, sessions=sessions, parser=parser, settings=settings)
    assert second.attempt == first.attempt + 1
    stale = processing.parse_part(doc_id, 1, first.attempt, sessions=sessions, parser=parser, settings=settings)
    assert stale.state == "skipped"
    states = [
        processing.parse_part(doc_id, p, second.attempt, sessions=sessions, parser=parser, settings=settings).state
        for p in second.parts
    ]
    assert states[-1] == "embedding"


def test_a_range_in_another_process_reads_the_bytes_once(
    sessions, parser, corpus_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    data = (corpus_dir / LONG_PDF).read_bytes()
    settings = Settings(data_dir=tmp_path, parse=ParseLimits(split_pages=100))
    doc_id = queued_document(sessions, "split-other-process", data)
    first = processing.parse_document(doc_id, sessions=sessions, parser=parser, settings=settings)
    reads: list[int] = []
    real = store.document_content
    monkeypatch.setattr(store, "document_content", lambda s, d: reads.append(d) or real(s, d))
    with SandboxedParser(ParseLimits(timeout_s=120)) as other:  # another worker's child holds nothing yet
        outcomes = [
            processing.parse_part(doc_id, p, first.attempt, sessions=sessions, parser=other, settings=settings)
            for p in first.parts
        ]
    assert reads == [doc_id] and outcomes[-1].state == "embedding"


def test_the_character_limit_counts_every_range_of_a_split_document(
    sessions, parser, corpus_dir: Path, tmp_path: Path
) -> None:
    data = (corpus_dir / LONG_PDF).read_bytes()
    doc_id = queued_document(sessions, "split-char-limit", data)
    roomy = Settings(data_dir=tmp_path, parse=ParseLimits(split_pages=64))
    first = processing.parse_document(doc_id, sessions=sessions, parser=parser, settings=roomy)
    with sessions.begin() as s:
        first_range = s.execute(
            text("SELECT chars FROM document_parts WHERE document_id = :d AND part = 0"), {"d": doc_id}
        ).scalar_one()
    assert first_range > 0
    # each range alone stays under this limit; the document's total does not
    tight = Settings(data_dir=tmp_path, parse=ParseLimits(split_pages=64, max_chars=first_range + 100))
    outcomes = [
        processing.parse_part(doc_id, p, first.attempt, sessions=sessions, parser=parser, settings=tight)
        for p in first.parts
    ]
    assert outcomes[0].state == "failed" and "parse.max_chars" in outcomes[0].reason
    assert {o.state for o in outcomes[1:]} == {"skipped"}  # the claim ended with the failure
    with sessions.begin() as s:
        state, error = s.execute(text("SELECT state, last_error FROM documents WHERE id = :d"), {"d": doc_id}).one()
        parts = s.execute(text("SELECT count(*) FROM document_parts WHERE document_id = :d"), {"d": doc_id})
        assert state == "failed" and "by page 128" in error and parts.scalar_one() == 0
