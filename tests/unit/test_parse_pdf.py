"""The PDF parser in-process on corpus files and on small PDFs built with PyMuPDF."""

from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest

from docpipe.errors import CorruptDocument, EmptyDocument, EncryptedDocument, TooLarge
from docpipe.parse import parse_bytes
from docpipe.parse.pdf import NO_TEXT_LAYER
from docpipe.types import ParsedDocument


def parse_pdf(data: bytes, max_pages: int = 1000) -> ParsedDocument:
    return parse_bytes(data, "application/pdf", max_pages=max_pages)


def corpus_pdf(corpus_dir: Path, name: str) -> ParsedDocument:
    return parse_pdf((corpus_dir / "pdf" / name).read_bytes())


def build_pdf(pages: list[list[str]], toc: list[list] | None = None, title: str | None = None) -> bytes:
    """A PDF with one line of Helvetica per string, one list of strings per page."""
    doc = pymupdf.open()
    for lines in pages:
        page = doc.new_page()
        for n, line in enumerate(lines):
            page.insert_text((72, 72 + 60 * n), line, fontname="helv")
    if toc:
        doc.set_toc(toc)
    if title:
        doc.set_metadata({"title": title})
    return doc.tobytes()


@pytest.mark.parametrize(
    ("name", "phrase", "page"),
    [
        ("pdfjs__test__pdfs__freeculture.pdf", "my.mp3.com service", 200),
        ("pymupdf__tests__resources__test_4751.pdf", "The Qwen2 series consists of models of 5 sizes", 5),
        ("samplefiles__009-pdflatex-geotopo__GeoTopo-komprimiert.pdf", "Homotopie von Wegen", 50),
        ("pdfjs__test__pdfs__file_pdfjs_test.pdf", "Mochitest-other (Moth)", 2),
        ("pdfjs__test__pdfs__nested_outline.pdf", "Future Work", 9),
    ],
)
def test_text_lands_on_its_page(corpus_dir: Path, name: str, phrase: str, page: int) -> None:
    doc = corpus_pdf(corpus_dir, name)
    pages = {block.page for block in doc.blocks if phrase in block.text}
    assert page in pages
    assert all(1 <= block.page <= doc.page_count for block in doc.blocks)
    assert [block.page for block in doc.blocks] == sorted(block.page for block in doc.blocks)


def test_outline_gives_heading_paths(corpus_dir: Path) -> None:
    doc = corpus_pdf(corpus_dir, "pdfjs__test__pdfs__nested_outline.pdf")
    headings = [(b.page, b.text, b.heading_path) for b in doc.blocks if b.is_heading]
    assert headings == [
        (1, "Introduction", ("1. Introduction",)),
        (2, "Background", ("1. Introduction", "1.1 Background")),
        (3, "Motivation", ("1. Introduction", "1.2 Motivation")),
        (4, "Main Content", ("2. Main Content",)),
        (5, "First Topic", ("2. Main Content", "2.1 First Topic")),
        (6, "Second Topic", ("2. Main Content", "2.2 Second Topic")),
        (7, "Conclusion", ("3. Conclusion",)),
        (8, "Summary", ("3. Conclusion", "3.1 Summary")),
        (9, "Future Work", ("3. Conclusion", "3.2 Future Work")),
    ]
    for block in doc.blocks:  # body text sits under the heading of its page
        assert block.heading_path == next(h[2] for h in headings if h[0] == block.page)


def test_outline_of_a_book(corpus_dir: Path) -> None:
    doc = corpus_pdf(corpus_dir, "pdfjs__test__pdfs__freeculture.pdf")
    assert doc.title == "Free Culture"
    assert doc.page_count == 352
    on_200 = {block.heading_path for block in doc.blocks if block.page == 200}
    assert ("PUZZLES", "12: Harms", "Constraining Innovators") in on_200


def test_heading_path_changes_mid_page() -> None:
    data = build_pdf(
        [["Alpha", "alpha body"], ["more alpha", "Beta", "beta body"]],
        toc=[[1, "Alpha", 1], [1, "Beta", 2]],
        title="Built",
    )
    doc = parse_pdf(data)
    got = [(b.page, b.text, b.heading_path, b.is_heading) for b in doc.blocks]
    assert got == [
        (1, "Alpha", ("Alpha",), True),
        (1, "alpha body", ("Alpha",), False),
        (2, "more alpha", ("Alpha",), False),
        (2, "Beta", ("Beta",), True),
        (2, "beta body", ("Beta",), False),
    ]
    assert doc.title == "Built"


def test_nul_and_control_characters_are_removed() -> None:
    doc = parse_pdf(build_pdf([["a\x00b\x01c\x1fd end"]]))
    assert [b.text for b in doc.blocks] == ["abcd end"]


def test_scanned_pdf_has_no_blocks_and_a_warning(corpus_dir: Path) -> None:
    doc = corpus_pdf(corpus_dir, "pdfjs__test__pdfs__PDFBOX-3148-2-fuzzed.pdf")  # image-only, repaired
    assert doc.blocks == []
    assert doc.page_count == 1
    assert doc.warnings[0] == NO_TEXT_LAYER
    assert "repairing PDF document" in doc.warnings


def test_many_mupdf_warnings_are_truncated(corpus_dir: Path) -> None:
    with pytest.raises(EmptyDocument, match="PDF has no pages"):  # 963 warnings on the way
        corpus_pdf(corpus_dir, "qpdf__qpdf__qtest__qpdf__issue-335a.pdf")
    doc = parse_pdf(build_pdf([[]]))
    assert doc.warnings == [NO_TEXT_LAYER]  # nothing left over from the previous document


def test_page_limit(corpus_dir: Path) -> None:
    data = (corpus_dir / "pdf" / "pdfjs__test__pdfs__freeculture.pdf").read_bytes()
    with pytest.raises(TooLarge, match="352 pages, more than the limit of 100"):
        parse_pdf(data, max_pages=100)


def test_owner_password_only_opens(corpus_dir: Path) -> None:
    doc = corpus_pdf(corpus_dir, "qpdf__qpdf__qtest__qpdf__enc-XI-R6_V5_O_master.pdf")
    assert doc.page_count == 30
    assert "Potato 29" in [b.text for b in doc.blocks if b.page == 30]


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("qpdf__qpdf__qtest__qpdf__enc-R2_V1_U_view_O_master.pdf", EncryptedDocument, "password required"),
        ("qpdf__qpdf__qtest__qpdf__bad1.pdf", CorruptDocument, "cannot open PDF: Failed to open stream"),
        ("pdfjs__test__pdfs__poppler-67295-0.pdf", CorruptDocument, "Invalid number of pages"),
        ("pdfjs__test__pdfs__Pages-tree-refs.pdf", CorruptDocument, "extraction failed on page 2: "),
        ("qpdf__qpdf__qtest__qpdf__empty.pdf", EmptyDocument, "PDF has no pages"),
    ],
)
def test_bad_pdfs(corpus_dir: Path, name: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        corpus_pdf(corpus_dir, name)


def test_mupdf_prints_nothing(corpus_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    for name in ["qpdf__qpdf__qtest__qpdf__issue-100.pdf", "pdfjs__test__pdfs__poppler-742-0-fuzzed.pdf"]:
        with pytest.raises((EmptyDocument, CorruptDocument)):
            corpus_pdf(corpus_dir, name)
    assert capfd.readouterr() == ("", "")
