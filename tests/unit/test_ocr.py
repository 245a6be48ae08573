"""OCR on pages rendered at test time: scanned PDFs, images, the per-page limit, the page budget."""

from __future__ import annotations

import io
import os
import time

import pymupdf
import pytest
from PIL import Image

from docpipe.config import OcrConfig
from docpipe.parse import detect_media_type, parse_bytes
from docpipe.parse.ocr_pages import read_pages

PAGE_1 = "Invoice number 4711 for the harbour office.\nPayment is due within thirty days."
PAGE_2 = "Minutes of the garden committee.\nThe new greenhouse opens in April."
OCR = OcrConfig()


def page_png(text: str, *, dpi: int = 150, rotate: int = 0) -> bytes:
    """A page of `text` rendered to a PNG, as a scanner would produce it (optionally turned)."""
    with pymupdf.open() as doc:
        page = doc.new_page(width=420, height=160)  # a slip, not a full page: OCR time grows with the area
        page.insert_textbox(pymupdf.Rect(20, 20, 400, 150), text, fontsize=14)
        png = page.get_pixmap(dpi=dpi).tobytes("png")
    if rotate:
        buf = io.BytesIO()
        Image.open(io.BytesIO(png)).rotate(rotate, expand=True).save(buf, format="PNG")
        png = buf.getvalue()
    return png


def scanned_pdf(*texts: str) -> bytes:
    """A PDF whose pages are only images of text: no text layer at all."""
    with pymupdf.open() as doc:
        for text in texts:
            page = doc.new_page(width=420, height=160)
            page.insert_image(page.rect, stream=page_png(text))
        return doc.tobytes()


def mixed_pdf(pages: list[tuple[str, bool]]) -> bytes:
    """A PDF of (text, scanned) pages: scanned ones are only an image of their text, others a text layer."""
    with pymupdf.open() as doc:
        for text, scanned in pages:
            page = doc.new_page(width=420, height=160)
            if scanned:
                page.insert_image(page.rect, stream=page_png(text))
            else:
                page.insert_textbox(pymupdf.Rect(20, 20, 400, 150), text, fontsize=14)
        return doc.tobytes()


def words(text: str) -> set[str]:
    return {w.strip(".,").lower() for w in text.split()}


@pytest.fixture(scope="module")
def two_page_scan() -> bytes:
    return scanned_pdf(PAGE_1, PAGE_2)


def test_scanned_pdf_pages_are_read_with_their_page_numbers(two_page_scan: bytes) -> None:
    doc = parse_bytes(two_page_scan, "application/pdf", max_pages=10, ocr=OCR)
    by_page = {page: " ".join(b.text for b in doc.blocks if b.page == page) for page in (1, 2)}
    assert {"invoice", "4711", "harbour", "payment", "thirty"} <= words(by_page[1])
    assert {"garden", "committee", "greenhouse", "april"} <= words(by_page[2])
    assert all(b.ocr_confidence is not None and 0.8 < b.ocr_confidence <= 1 for b in doc.blocks)
    assert doc.parsed_to is None and doc.page_count == 2


def test_ocr_budget_stops_the_range_before_the_next_scanned_page(two_page_scan: bytes) -> None:
    doc = parse_bytes(two_page_scan, "application/pdf", max_pages=10, ocr=OCR, ocr_budget=1)
    assert doc.parsed_to == 1 and doc.ocr_pending == [2]
    assert {b.page for b in doc.blocks} == {1}


def test_ocr_budget_reports_the_scanned_pages_it_left() -> None:
    text = "This page has a proper text layer of its own."
    pages = [(text, False), ("Scan one of the ledger.", True), (text, False), ("Scan two of the ledger.", True)]
    pages += [(text, False), ("Scan three of the ledger.", True)]
    doc = parse_bytes(mixed_pdf(pages), "application/pdf", max_pages=10, ocr=OCR, ocr_budget=1)
    assert doc.parsed_to == 3 and doc.ocr_pending == [4, 6]
    assert {b.page for b in doc.blocks} == {1, 2, 3}
    assert [b.page for b in doc.blocks if b.ocr_confidence is not None] == [2]


def test_ocr_off_leaves_a_scan_without_text(two_page_scan: bytes) -> None:
    doc = parse_bytes(two_page_scan, "application/pdf", max_pages=10, ocr=OcrConfig(mode="off"))
    assert doc.blocks == []
    assert doc.warnings


def test_png_is_a_document() -> None:
    png = page_png(PAGE_1)
    media_type = detect_media_type("scan.bin", png[:4096])
    assert media_type == "image/png"
    doc = parse_bytes(png, media_type, max_pages=10, ocr=OCR)
    assert {"invoice", "4711", "harbour"} <= words(" ".join(b.text for b in doc.blocks))
    assert {b.page for b in doc.blocks} == {1}


@pytest.mark.slow
def test_multipage_tiff_frames_are_pages() -> None:
    frames = [Image.open(io.BytesIO(page_png(text))).convert("RGB") for text in (PAGE_1, PAGE_2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    doc = parse_bytes(buf.getvalue(), "image/tiff", max_pages=10, ocr=OCR)
    assert doc.page_count == 2
    assert "greenhouse" in words(" ".join(b.text for b in doc.blocks if b.page == 2))


@pytest.mark.slow
def test_a_sideways_scan_is_turned_upright() -> None:
    doc = parse_bytes(page_png(PAGE_2, rotate=90), "image/png", max_pages=10, ocr=OCR)
    assert {"garden", "committee", "greenhouse"} <= words(" ".join(b.text for b in doc.blocks))


@pytest.mark.parametrize(
    ("head", "name", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(8), "x", "image/png"),
        (b"\xff\xd8\xff\xe0" + bytes(8), "x", "image/jpeg"),
        (b"II*\x00" + bytes(8), "x", "image/tiff"),
        (b"MM\x00*" + bytes(8), "x", "image/tiff"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "x", "image/webp"),
        (b"", "photo.JPG", "image/jpeg"),
        (b"", "scan.tif", "image/tiff"),
    ],
)
def test_image_media_types(head: bytes, name: str, expected: str) -> None:
    assert detect_media_type(name, head) == expected


def _hang(page: int):
    time.sleep(3600)


def _exit(page: int):
    os._exit(3)


def test_a_page_that_hangs_is_cut_off_and_the_next_page_still_runs() -> None:
    config = OcrConfig(page_timeout_s=1.0)
    results = list(read_pages(_hang, [1, 2], config))
    assert [r.page for r in results] == [1, 2]
    assert all(r.error and "timed out after 1 s" in r.error and not r.blocks for r in results)


def test_a_page_that_kills_the_helper_is_reported() -> None:
    results = list(read_pages(_exit, [3], OcrConfig(page_timeout_s=30.0)))
    assert len(results) == 1 and results[0].page == 3 and "crashed" in (results[0].error or "")


def test_a_corrupt_image_fails_permanently() -> None:
    from docpipe.errors import CorruptDocument

    with pytest.raises(CorruptDocument):
        parse_bytes(b"\x89PNG\r\n\x1a\nnot really", "image/png", max_pages=10, ocr=OCR)


def test_a_page_whose_render_hangs_keeps_its_text_layer(corpus_dir) -> None:
    """MuPDF renders page 1 of this corpus file for minutes (MANIFEST: SLOW); forced OCR gives up on it."""
    data = (corpus_dir / "pdf/pymupdf__tests__resources__test_2548.pdf").read_bytes()
    config = OcrConfig(mode="force", page_timeout_s=2.0)
    doc = parse_bytes(data, "application/pdf; pages=1-1", max_pages=100, ocr=config)
    assert any("OCR of page 1 timed out after 2 s" in w for w in doc.warnings)
    assert doc.blocks and all(b.page == 1 and b.ocr_confidence is None for b in doc.blocks)
