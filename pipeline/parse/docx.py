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

from docpipe.errors import CorruptDocument, TooLarge
from docpipe.parse.common import HeadingPath, collapse_whitespace, describe, text_document, tidy_lines
from docpipe.types import Block, ParsedDocument

_HEADING_STYLE = re.compile(r"^(?:heading\s*(\d*)|title)$", re.IGNORECASE)
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_TEXT_TAGS = {f"{_W}t": None, f"{_W}tab": "\t", f"{_W}br": "\n", f"{_W}cr": "\n"}
MAX_XML_BYTES = 512 * 1024 * 1024  # uncompressed bytes of all parts; more is a zip bomb, refused unopened


def _text_of(element: object) -> str:
    """The text of a paragraph or cell element, in one linear pass (python-docx's ``.text`` is
    quadratic in the number of line breaks: 300k ``<w:br/>`` took minutes)."""
    parts = []
    for node in element.iter(*_TEXT_TAGS):  # type: ignore[attr-defined]
        fixed = _TEXT_TAGS[node.tag]
        parts.append(node.text or "" if fixed is None else fixed)
    return "".join(parts)


def _check_zip(data: bytes) -> None:
    """Refuse a package whose parts inflate past ``MAX_XML_BYTES`` before anything is inflated."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            total = sum(info.file_size for info in package.infolist())
    except (zipfile.BadZipFile, ValueError) as err:
        raise CorruptDocument(f"cannot open DOCX: {describe(err)}") from err
    if total > MAX_XML_BYTES:
        raise TooLarge(f"DOCX inflates to {total} bytes, more than the limit of {MAX_XML_BYTES} (a zip bomb?)")


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
                cells.append(collapse_whitespace(_text_of(cell._tc)))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


def parse_docx(data: bytes, *, max_chars: int | None = None) -> ParsedDocument:
    """A .docx file; all blocks on page 1 (Word pages are a rendering detail).

    ``max_chars`` (parse.max_chars): reading stops with ``TooLarge`` once the text passes it, so a
    small file that inflates to gigabytes of text costs the limit's worth of work, not the file's.
    """
    _check_zip(data)
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError, LxmlError) as err:
        raise CorruptDocument(f"cannot open DOCX: {describe(err)}") from err
    headings = HeadingPath()
    blocks: list[Block] = []
    chars = 0
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            blocks.append(Block(text=tidy_lines(_table_text(item)), page=1, heading_path=headings.path))
        else:
            level, raw = _heading_level(item), _text_of(item._p)
            if level is None:
                blocks.append(Block(text=tidy_lines(raw), page=1, heading_path=headings.path))
            elif text := collapse_whitespace(raw):
                blocks.append(Block(text=text, page=1, heading_path=headings.enter(level, text), is_heading=True))
            else:
                continue
        chars += len(blocks[-1].text)
        if max_chars is not None and chars > max_chars:
            raise TooLarge(
                f"document produced more than {max_chars} characters of text (parse.max_chars); "
                f"stopped reading after {chars}"
            )
    return text_document(blocks, title=document.core_properties.title)
