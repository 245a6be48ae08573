"""End to end: a scanned PDF and a PNG, made at test time, end ready with OCR'd chunks that search finds."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from tests.unit.test_ocr import page_png, scanned_pdf

COLLECTION = "e2e-ocr"
SCAN_TEXT = "Lease agreement for the lighthouse keeper.\nThe annual rent is paid in herring."
PNG_TEXT = "Receipt from the bicycle workshop.\nNew chain and two brake cables fitted."


@pytest.fixture(scope="module")
def ocr_ingested(client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    folder = tmp_path_factory.mktemp("scans")
    (folder / "lease.pdf").write_bytes(scanned_pdf(SCAN_TEXT))
    (folder / "receipt.png").write_bytes(page_png(PNG_TEXT))
    job = client.ingest([folder / "lease.pdf", folder / "receipt.png"], collection=COLLECTION)
    counts = job.wait(timeout_s=300)
    assert counts == {"ready": 2}, counts
    with client.sessions.begin() as s:
        rows = s.execute(text("SELECT id, source FROM documents WHERE id = ANY(:i)"), {"i": job.document_ids})
        return {Path(r.source).name: r.id for r in rows}


def test_scans_end_ready_with_ocr_flagged_chunks(client, ocr_ingested: dict[str, int]) -> None:
    with client.sessions.begin() as s:
        rows = s.execute(
            text(
                "SELECT source, page_start, ocr, ocr_confidence, text FROM docpipe_chunks "
                "WHERE collection = :c ORDER BY source"
            ),
            {"c": COLLECTION},
        ).all()
    by_name = {Path(r.source).name: r for r in rows}
    assert set(by_name) == {"lease.pdf", "receipt.png"}
    for row in rows:
        assert row.ocr is True and 0.5 <= row.ocr_confidence <= 1.0 and row.page_start == 1
    assert "lighthouse" in by_name["lease.pdf"].text.lower()
    assert "bicycle" in by_name["receipt.png"].text.lower()


@pytest.mark.parametrize(
    ("query", "name"), [("lighthouse keeper rent", "lease.pdf"), ("bicycle brake cables", "receipt.png")]
)
def test_search_finds_ocr_text_and_says_so(client, ocr_ingested: dict[str, int], query: str, name: str) -> None:
    hits = client.search(query, collection=COLLECTION, k=3)
    assert hits and hits[0].document_id == ocr_ingested[name]
    assert hits[0].ocr is True and hits[0].ocr_confidence is not None
