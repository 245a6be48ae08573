"""PDF with PyMuPDF: text blocks per page in reading order, headings from the outline.

Only cheap calls are used (``get_text("blocks")`` and ``get_toc()``): ``get_text("dict")``,
``get_pixmap``, ``find_tables`` and ``pymupdf4llm`` can run for minutes on some real files.
"""

from __future__ import annotations

import re

import pymupdf

from docpipe.errors import CorruptDocument, EmptyDocument, EncryptedDocument, TooLarge
from docpipe.parse.common import (
    HeadingPath,
    clean_title,
    collapse_whitespace,
    describe,
    tidy_lines,
    truncate_warnings,
)
from docpipe.types import Block, ParsedDocument

NO_TEXT_LAYER = "no text layer (scanned or image-only)"
_NUMBERING = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[IVXLC]+\.)\s+")  # "1.2 ", "3. ", "IV. "
_TEXT_BLOCK = 0  # block type of text in get_text("blocks"); 1 is an image


def silence_mupdf() -> None:
    """Stop MuPDF printing errors and warnings; they are collected with ``mupdf_warnings()``."""
    pymupdf.TOOLS.mupdf_display_errors(False)
    if hasattr(pymupdf.TOOLS, "mupdf_display_warnings"):
        pymupdf.TOOLS.mupdf_display_warnings(False)


class _Outline:
    """Walks the PDF outline (TOC) page by page to give each block its heading path."""

    def __init__(self, toc: list[list]) -> None:
        entries = [(int(page), int(level), collapse_whitespace(str(title))) for level, title, page, *_ in toc]
        # Entries without a target page (page < 1) cannot be placed; order by page, keep TOC order.
        self._entries = sorted((e for e in entries if e[0] >= 1 and e[2]), key=lambda e: e[0])
        self._next = 0
        self._headings = HeadingPath()

    def page_blocks(self, page: int, texts: list[str]) -> list[Block]:
        """Blocks of one page; a block equal to one of the page's outline titles is a heading."""
        on_page = []
        while self._next < len(self._entries) and self._entries[self._next][0] <= page:
            on_page.append(self._entries[self._next])
            self._next += 1
        titles = {_key(title) for entry_page, _, title in on_page if entry_page == page}
        if not any(_key(text) in titles for text in texts):  # outline titles not found in the text:
            for _, level, title in on_page:  # the whole page sits under the last of them
                self._headings.enter(level, title)
            on_page = []
        blocks = []
        for text in texts:
            is_heading = _key(text) in titles
            if is_heading:  # apply the page's entries up to and including this one
                while on_page:
                    _, level, title = on_page.pop(0)
                    self._headings.enter(level, title)
                    if _key(title) == _key(text):
                        break
            blocks.append(Block(text=text, page=page, heading_path=self._headings.path, is_heading=is_heading))
        for _, level, title in on_page:
            self._headings.enter(level, title)
        return blocks


def _key(text: str) -> str:
    """What must match between a block and an outline title: words without section numbering."""
    return _NUMBERING.sub("", collapse_whitespace(text)).casefold()


def _open(data: bytes) -> pymupdf.Document:
    """Open and unlock the PDF, or raise the permanent error that says why not."""
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as err:
        detail = next(iter(pymupdf.TOOLS.mupdf_warnings(False).splitlines()), "")
        reason = describe(err) + (f" ({detail})" if detail else "")
        raise CorruptDocument(f"cannot open PDF: {reason}") from err
    if doc.needs_pass and not doc.authenticate(""):
        doc.close()
        raise EncryptedDocument("PDF is encrypted: password required")
    return doc


def _page_count(doc: pymupdf.Document, max_pages: int) -> int:
    try:
        count = doc.page_count
    except Exception as err:
        raise CorruptDocument(f"cannot open PDF: {describe(err)}") from err
    if count == 0:
        raise EmptyDocument("PDF has no pages")
    if count > max_pages:
        raise TooLarge(f"PDF has {count} pages, more than the limit of {max_pages}")
    return count


def _page_texts(doc: pymupdf.Document, index: int) -> list[str]:
    """Text blocks of page ``index`` (0-based) in reading order, cleaned, empty ones dropped."""
    try:
        raw = doc.load_page(index).get_text("blocks", sort=True)
    except Exception as err:
        raise CorruptDocument(f"text extraction failed on page {index + 1}: {describe(err)}") from err
    texts = (tidy_lines(block[4], keep_indent=False) for block in raw if block[6] == _TEXT_BLOCK)
    return [text for text in texts if text]


def _outline(doc: pymupdf.Document, warnings: list[str]) -> _Outline:
    try:
        return _Outline(doc.get_toc(simple=True))
    except Exception as err:  # a broken outline only costs the headings
        warnings.append(f"outline unreadable: {describe(err)}")
        return _Outline([])


def parse_pdf(data: bytes, *, max_pages: int, pages: tuple[int, int] | None = None) -> ParsedDocument:
    """A PDF's text blocks with 1-based page numbers; a PDF without a text layer gives no blocks.

    ``pages`` (first, last; 1-based, inclusive) parses only that range, for documents split across
    workers; ``page_count`` is always the whole document's.
    """
    silence_mupdf()
    pymupdf.TOOLS.reset_mupdf_warnings()
    warnings: list[str] = []
    with _open(data) as doc:
        page_count = _page_count(doc, max_pages)
        first, last = pages or (1, page_count)
        outline = _outline(doc, warnings)
        blocks: list[Block] = []
        for index in range(max(first, 1) - 1, min(last, page_count)):
            blocks.extend(outline.page_blocks(index + 1, _page_texts(doc, index)))
        title = clean_title((doc.metadata or {}).get("title"))
    if not blocks:
        warnings.append(NO_TEXT_LAYER)
    warnings.extend(pymupdf.TOOLS.mupdf_warnings().splitlines())
    return ParsedDocument(blocks=blocks, page_count=page_count, title=title, warnings=truncate_warnings(warnings))
