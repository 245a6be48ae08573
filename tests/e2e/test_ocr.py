"""End to end: a scanned PDF and a PNG, made at test time, end ready with OCR'd chunks that search finds."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text

from tests.unit.test_ocr import mixed_pdf, page_png, scanned_pdf

COLLECTION = "e2e-ocr"
SCAN_TEXT = "Lease agreement for the lighthouse keeper.\nThe annual rent is paid in herring."
PNG_TEXT = "Receipt from the bicycle workshop.\nNew chain and two brake cables fitted."
# Three pages each: the test stack reads one scanned page per parse request, so these fan out.
LONG_PAGES = ["Chapter one: the orchard survey.", "Chapter two: apple varieties.", "Chapter three: pruning in winter."]
# A text PDF whose scans start after its first range (parse.split_pages = 64): the range 65-77 stops
# at its OCR budget (one page on the test stack) and hands the rest of its pages to new parts.
MIXED_SCANS = {71: "The harbour crane was repaired.", 72: "Barrels of cider were counted."}
MIXED_SCANS |= {73: "The lock keeper signed below.", 77: "Invoice for the orchard ladders."}
MIXED_WORDS = {"crane": 71, "barrels": 72, "keeper": 73, "ladders": 77}


def tiff(*texts: str) -> bytes:
    frames = [Image.open(io.BytesIO(page_png(t))).convert("RGB") for t in texts]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


@pytest.fixture(scope="module")
def ocr_ingested(client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    folder = tmp_path_factory.mktemp("scans")
    (folder / "lease.pdf").write_bytes(scanned_pdf(SCAN_TEXT))
    (folder / "receipt.png").write_bytes(page_png(PNG_TEXT))
    (folder / "orchard.pdf").write_bytes(scanned_pdf(*LONG_PAGES))
    (folder / "orchard.tiff").write_bytes(tiff(*LONG_PAGES))
    names = ["lease.pdf", "receipt.png", "orchard.pdf", "orchard.tiff"]
    job = client.ingest([folder / name for name in names], collection=COLLECTION)
    counts = job.wait(timeout_s=600)
    assert counts == {"ready": len(names)}, counts
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
    assert set(by_name) == {"lease.pdf", "receipt.png", "orchard.pdf", "orchard.tiff"}
    for row in rows:
        assert row.ocr is True and 0.5 <= row.ocr_confidence <= 1.0
    assert "lighthouse" in by_name["lease.pdf"].text.lower()
    assert "bicycle" in by_name["receipt.png"].text.lower()


@pytest.mark.parametrize(
    ("query", "name"), [("lighthouse keeper rent", "lease.pdf"), ("bicycle brake cables", "receipt.png")]
)
def test_search_finds_ocr_text_and_says_so(client, ocr_ingested: dict[str, int], query: str, name: str) -> None:
    hits = client.search(query, collection=COLLECTION, k=3)
    assert hits and hits[0].document_id == ocr_ingested[name]
    assert hits[0].ocr is True and hits[0].ocr_confidence is not None


@pytest.mark.parametrize("name", ["orchard.pdf", "orchard.tiff"])
def test_long_scans_fan_out_and_keep_their_page_numbers(client, ocr_ingested: dict[str, int], name: str) -> None:
    with client.sessions.begin() as s:
        rows = s.execute(
            text("SELECT page_start, page_end, text FROM chunks WHERE document_id = :d"), {"d": ocr_ingested[name]}
        ).all()
        pages = s.execute(text("SELECT page_count FROM documents WHERE id = :d"), {"d": ocr_ingested[name]})
        page_count = pages.scalar_one()
    assert page_count == 3
    joined = " ".join(r.text for r in rows).lower()
    assert all(word in joined for word in ("orchard", "varieties", "pruning"))
    assert min(r.page_start for r in rows) == 1 and max(r.page_end for r in rows) == 3


def test_readme_ocr_sql_runs(client, ocr_ingested: dict[str, int]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("## OCR")
    section = readme[start : readme.index("\n## ", start + 1)]
    (sql,) = re.findall(r"```postgresql\n(.*?)```", section, flags=re.S)
    with client.sessions.begin() as s:
        rows = s.execute(text(sql.replace("'docs'", f"'{COLLECTION}'"))).all()
    assert {Path(r.source).name for r in rows} == set(ocr_ingested)
    confidences = [float(r.confidence) for r in rows]
    assert confidences == sorted(confidences)


def page_sequence(chunk_texts: list[str]) -> list[int]:
    """The mixed PDF's pages in the order its chunks read them, each chunk's overlap with the one before dropped."""
    marker = re.compile(r"page (\d+) of the mill|(" + "|".join(MIXED_WORDS) + ")", flags=re.I)  # OCR drops spaces
    read: list[int] = []
    for chunk in chunk_texts:
        pages = [int(m[1]) if m[1] else MIXED_WORDS[m[2].lower()] for m in marker.finditer(chunk)]
        overlap = max((k for k in range(len(pages) + 1) if read[len(read) - k :] == pages[:k]), default=0)
        read += pages[overlap:]
    return read


def test_scans_after_the_first_range_are_read_within_each_requests_budget(client, tmp_path: Path) -> None:
    pages = [
        (MIXED_SCANS.get(n, f"Page {n} of the mill ledger, a text layer page."), n in MIXED_SCANS) for n in range(1, 78)
    ]
    (tmp_path / "mixed.pdf").write_bytes(mixed_pdf(pages))
    job = client.ingest([tmp_path / "mixed.pdf"], collection=COLLECTION + "-mixed")
    assert job.wait(timeout_s=600) == {"ready": 1}
    with client.sessions.begin() as s:
        rows = s.execute(
            text("SELECT text, page_start, page_end, ocr FROM chunks WHERE document_id = :d ORDER BY ordinal"),
            {"d": job.document_ids[0]},
        ).all()
    assert page_sequence([r.text for r in rows]) == list(range(1, 78))
    assert any(r.ocr for r in rows) and min(r.page_start for r in rows) == 1 and max(r.page_end for r in rows) == 77
