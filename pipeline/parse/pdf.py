"""PDF with PyMuPDF: text blocks per page in reading order, headings from the outline.

Only cheap calls are used (``get_text("blocks")`` and ``get_toc()``): ``get_text("dict")``,
``get_pixmap``, ``find_tables`` and ``pymupdf4llm`` can run for minutes on some real files.
Pages without a usable text layer (``page_decision``) are rendered and read by OCR in a forked
helper under a per-page time limit (``ocr_pages``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

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
from docpipe.parse.ocr import MAX_SIDE_PX
from docpipe.parse.ocr_pages import read_pages
from docpipe.parse.page_decision import ocr_reason, page_facts
from docpipe.types import Block, ParsedDocument

if TYPE_CHECKING:
    import numpy as np

    from docpipe.config import OcrConfig

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


def render_page(doc: pymupdf.Document, page: int, dpi: int) -> np.ndarray:
    """Page ``page`` (1-based) as an RGB image at ``dpi``, scaled down to ``MAX_SIDE_PX`` on its long side."""
    import numpy as np

    loaded = doc.load_page(page - 1)
    zoom = min(dpi / 72, MAX_SIDE_PX / max(loaded.rect.width, loaded.rect.height, 1.0))
    pix = loaded.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
    return np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, 3)


@dataclass
class _Plan:
    """What to do with a page range: text blocks per page, pages to OCR, and where the OCR budget
    stopped it (``parsed_to``; ``pending``: the pages after it that want OCR too)."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    wanted: list[int] = field(default_factory=list)
    parsed_to: int | None = None
    pending: list[int] = field(default_factory=list)


def _ocr_plan(doc: pymupdf.Document, numbers: range, ocr: OcrConfig | None, budget: int | None) -> _Plan:
    """Decide page by page; pages past ``ocr.max_pages`` keep their text layer. Once the budget
    (pages) is spent, the rest of the range is only looked at, so the caller can plan it."""
    plan = _Plan()
    for number in numbers:
        texts = _page_texts(doc, number - 1)
        wants_ocr = (
            ocr is not None
            and ocr.mode != "off"
            and number <= ocr.max_pages
            and ocr_reason(page_facts(doc.load_page(number - 1), texts), ocr.mode) is not None
        )
        if plan.parsed_to is None and wants_ocr and budget is not None and len(plan.wanted) == budget:
            plan.parsed_to = number - 1
        if plan.parsed_to is not None:
            if wants_ocr:
                plan.pending.append(number)
            continue
        plan.texts[number] = texts
        if wants_ocr:
            plan.wanted.append(number)
    return plan


def parse_pdf(
    data: bytes,
    *,
    max_pages: int,
    pages: tuple[int, int] | None = None,
    ocr: OcrConfig | None = None,
    ocr_budget: int | None = None,
) -> ParsedDocument:
    """A PDF's text blocks with 1-based page numbers; pages without a usable text layer are OCR'd.

    ``pages`` (first, last; 1-based, inclusive) parses only that range, for documents split across
    workers; ``page_count`` is always the whole document's. ``ocr`` None or mode "off" reads the
    text layer only. With ``ocr_budget`` (pages), the range stops before the page that would be
    the budget's next OCR page: ``parsed_to`` says where, ``ocr_pending`` which of the pages after
    it want OCR (the caller plans the rest of the range from them).
    """
    silence_mupdf()
    pymupdf.TOOLS.reset_mupdf_warnings()
    warnings: list[str] = []
    with _open(data) as doc:
        page_count = _page_count(doc, max_pages)
        first, last = pages or (1, page_count)
        outline = _outline(doc, warnings)
        numbers = range(max(first, 1), min(last, page_count) + 1)
        plan = _ocr_plan(doc, numbers, ocr, ocr_budget)
        texts, wanted = plan.texts, plan.wanted
        read: dict[int, list[tuple[str, float]]] = {}
        if wanted and ocr is not None:
            for result in read_pages(lambda page: render_page(doc, page, ocr.dpi), wanted, ocr):
                if result.error:
                    warnings.append(result.error)
                elif result.blocks:
                    read[result.page] = result.blocks
        blocks: list[Block] = []
        for number, page_texts in texts.items():
            if number in read:
                found = outline.page_blocks(number, [text for text, _ in read[number]])
                blocks.extend(replace(b, ocr_confidence=c) for b, (_, c) in zip(found, read[number], strict=True))
            else:
                blocks.extend(outline.page_blocks(number, page_texts))
        title = clean_title((doc.metadata or {}).get("title"))
    if not blocks:
        warnings.append(f"no text found, even after OCR of {len(wanted)} pages" if wanted else NO_TEXT_LAYER)
    warnings.extend(pymupdf.TOOLS.mupdf_warnings().splitlines())
    return ParsedDocument(
        blocks=blocks,
        page_count=page_count,
        title=title,
        warnings=truncate_warnings(warnings),
        parsed_to=plan.parsed_to,
        ocr_pending=plan.pending,
    )
