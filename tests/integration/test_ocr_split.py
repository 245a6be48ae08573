"""A mixed PDF whose scans sit in a later page range: every request keeps to its OCR budget, the
rest of a range becomes new parts, and the document still chunks once, like the unsplit parse."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from docpipe import processing
from docpipe.config import OcrConfig, ParseLimits, Settings
from docpipe.parse import SandboxedParser
from tests.integration.test_split import chunk_rows, queued_document
from tests.unit.test_ocr import mixed_pdf

TEXT = "Page {} of the mill ledger has a proper text layer."
SCANS = {6: "Scanned page six lists the harbour crane.", 7: "Scanned page seven counts the barrels."}
SCANS[9] = "Scanned page nine names the lock keeper."


@pytest.fixture(scope="module")
def parser():
    with SandboxedParser(ParseLimits(timeout_s=120), ocr=OcrConfig()) as p:
        yield p


@pytest.fixture(scope="module")
def pdf() -> bytes:
    """10 pages: text 1-5, scans 6-7, text 8, scan 9, text 10."""
    return mixed_pdf([(SCANS.get(n, TEXT.format(n)), n in SCANS) for n in range(1, 11)])


def test_a_part_that_meets_scans_resplits_and_the_last_part_chunks_once(
    sessions, parser, pdf: bytes, tmp_path: Path
) -> None:
    whole = Settings(data_dir=tmp_path, parse=ParseLimits(split_pages=0))
    whole_id = queued_document(sessions, "ocr-split-whole", pdf)
    assert processing.parse_document(whole_id, sessions=sessions, parser=parser, settings=whole).state == "embedding"

    split = Settings(data_dir=tmp_path, parse=ParseLimits(split_pages=4), ocr=OcrConfig(split_pages=1))
    doc_id = queued_document(sessions, "ocr-split-parts", pdf)
    first = processing.parse_document(doc_id, sessions=sessions, parser=parser, settings=split)
    assert first.state == "split" and first.parts == [1, 2]  # pages 1-4 have no scans: 5-8, 9-10

    def run(part: int) -> processing.ParseOutcome:
        return processing.parse_part(doc_id, part, first.attempt, sessions=sessions, parser=parser, settings=split)

    assert run(2).state == "parsing"  # 9-10: one scan, within the budget
    with sessions.begin() as s:
        pages = s.execute(
            text("SELECT part, page_start, page_end FROM document_parts WHERE document_id = :d ORDER BY part"),
            {"d": doc_id},
        ).all()
    assert [tuple(p) for p in pages] == [(0, 1, 4), (1, 5, 8), (2, 9, 10)]
    # 5-8: page 6 spends the budget, so 7-8 become part 3 and part 1 is not the last to finish
    resplit = run(1)
    assert (resplit.state, resplit.parts, resplit.attempt) == ("parsing", [3], first.attempt)
    with sessions.begin() as s:
        pages = s.execute(
            text("SELECT part, page_start, page_end, blocks IS NULL FROM document_parts WHERE document_id = :d"),
            {"d": doc_id},
        ).all()
    assert sorted(tuple(p) for p in pages) == [(0, 1, 4, False), (1, 5, 6, False), (2, 9, 10, False), (3, 7, 8, True)]
    assert run(3).state == "embedding"
    assert run(3).state == "skipped"  # a redelivered message changes nothing

    rows = chunk_rows(sessions, doc_id)
    assert rows == chunk_rows(sessions, whole_id)  # every page once, in order, as if parsed in one piece
    joined = " ".join(r[1] for r in rows).lower()
    assert all(word in joined for word in ("crane", "barrels", "keeper", "page 10 of the mill"))
    with sessions.begin() as s:
        state = s.execute(text("SELECT state FROM documents WHERE id = :d"), {"d": doc_id}).scalar_one()
    assert state == "embedding"


def test_a_batch_ocrs_nothing_its_scanned_pages_become_parts(sessions, parser, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ocr=OcrConfig(split_pages=2))
    small = mixed_pdf([(SCANS[6], True), (TEXT.format(2), False), (SCANS[7], True)])  # a scan first
    alone_id = queued_document(sessions, "ocr-batch-alone", small)
    assert processing.parse_document(alone_id, sessions=sessions, parser=parser, settings=settings).state == "embedding"
    text_id, pdf_id = (
        queued_document(sessions, f"ocr-batch-{n}", data)
        for n, data in enumerate([mixed_pdf([(TEXT.format(1), False)]), small])
    )

    done = processing.parse_documents([text_id, pdf_id], sessions=sessions, parser=parser, settings=settings)

    by_id = {o.document_id: o for o in done.outcomes}
    assert by_id[text_id].state == "embedding"  # not held up by the other document's OCR
    assert (by_id[pdf_id].state, by_id[pdf_id].parts) == ("split", [1])
    with sessions.begin() as s:
        pages = s.execute(
            text("SELECT part, page_start, page_end FROM document_parts WHERE document_id = :d ORDER BY part"),
            {"d": pdf_id},
        ).all()
    assert [tuple(p) for p in pages] == [(0, 1, 0), (1, 1, 3)]  # nothing parsed in the batch: page 1 wants OCR
    part = processing.parse_part(pdf_id, 1, by_id[pdf_id].attempt, sessions=sessions, parser=parser, settings=settings)
    assert part.state == "embedding"
    assert chunk_rows(sessions, pdf_id) == chunk_rows(sessions, alone_id)  # as if parsed in one piece
    assert "harbour crane" in " ".join(r[1] for r in chunk_rows(sessions, pdf_id)).lower()
