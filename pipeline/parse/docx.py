"""Word .docx: body paragraphs and tables in order; Title/Heading styles set the heading path."""

from __future__ import annotations

import io
import re
import zipfile

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml.etree import LxmlError

from docpipe.errors import CorruptDocument
from docpipe.parse.common import HeadingPath, collapse_whitespace, describe, text_document, tidy_lines
from docpipe.types import Block, ParsedDocument

_HEADING_STYLE = re.compile(r"^(?:heading\s*(\d*)|title)$", re.IGNORECASE)


def _heading_level(paragraph: Paragraph) -> int | None:
    """0 for the Title style, n for "Heading n" (1 when unnumbered), None for body text."""
    try:
        name = paragraph.style.name if paragraph.style is not None else ""
    except (KeyError, ValueError):  # a style id the styles part does not define
        return None
    match = _HEADING_STYLE.match((name or "").strip())
    if not match:
        return None
    return int(match.group(1) or 1) if name.lower().startswith("heading") else 0


def _table_text(table: Table) -> str:
    """One line per row, cell texts joined by `` | ``; merged cells count once."""
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) not in seen:
                seen.add(id(cell._tc))
                cells.append(collapse_whitespace(cell.text))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


def parse_docx(data: bytes) -> ParsedDocument:
    """A .docx file; all blocks on page 1 (Word pages are a rendering detail)."""
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError, LxmlError) as err:
        raise CorruptDocument(f"cannot open DOCX: {describe(err)}") from err
    headings = HeadingPath()
    blocks: list[Block] = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            blocks.append(Block(text=tidy_lines(_table_text(item)), page=1, heading_path=headings.path))
            continue
        level = _heading_level(item)
        if level is None:
            blocks.append(Block(text=tidy_lines(item.text), page=1, heading_path=headings.path))
        elif text := collapse_whitespace(item.text):
            blocks.append(Block(text=text, page=1, heading_path=headings.enter(level, text), is_heading=True))
    return text_document(blocks, title=document.core_properties.title)
