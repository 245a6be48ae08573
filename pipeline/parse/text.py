"""Plain text and Markdown: decode the bytes, split at blank lines, follow ATX headings."""

from __future__ import annotations

import codecs
import re

from docpipe.parse.common import HeadingPath, clean_text, collapse_whitespace, text_document, tidy_lines
from docpipe.types import Block, ParsedDocument

_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SNIFF_BYTES = 4096  # bytes looked at to spot UTF-16 without a byte-order mark

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_TAG = re.compile(r"<[^>]+>")


def decode_text(data: bytes) -> str:
    """Decode text: a byte-order mark wins, then UTF-8, BOM-less UTF-16, cp1252 and finally latin-1."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if utf16 := _sniff_utf16(data[:_SNIFF_BYTES]):
        return data.decode(utf16, errors="replace")
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _sniff_utf16(head: bytes) -> str | None:
    """UTF-16 of mostly-Latin text has a NUL in every other byte; say which byte order, if so."""
    if len(head) < 4:
        return None
    half = len(head) // 2
    even_nuls, odd_nuls = head[0::2].count(0), head[1::2].count(0)
    if odd_nuls > 0.4 * half and even_nuls < 0.05 * half:
        return "utf-16-le"
    if even_nuls > 0.4 * half and odd_nuls < 0.05 * half:
        return "utf-16-be"
    return None


def _paragraphs(text: str) -> list[str]:
    """Runs of non-blank lines."""
    return [para for para in re.split(r"\n[ \t]*\n", text) if para.strip()]


def parse_text(data: bytes) -> ParsedDocument:
    """Plain text: one block per paragraph (blank-line separated), all on page 1."""
    text = clean_text(decode_text(data))
    return text_document([Block(text=tidy_lines(para), page=1) for para in _paragraphs(text)])


def parse_markdown(data: bytes) -> ParsedDocument:
    """Markdown: ATX headings become heading blocks and set the path; fenced code stays whole."""
    lines = clean_text(decode_text(data)).split("\n")
    headings = HeadingPath()
    blocks: list[Block] = []
    title: str | None = None
    pending: list[str] = []

    def flush() -> None:
        text = tidy_lines("\n".join(pending))
        if text:
            blocks.append(Block(text=text, page=1, heading_path=headings.path))
        pending.clear()

    index = 0
    while index < len(lines):
        line = lines[index]
        if fence := _FENCE.match(line):
            flush()
            end = _fence_end(lines, index, fence.group(1))
            code = "\n".join(line.rstrip() for line in lines[index:end])
            blocks.append(Block(text=code, page=1, heading_path=headings.path))
            index = end
            continue
        if heading := _ATX_HEADING.match(line):
            flush()
            level, text = len(heading.group(1)), _heading_text(heading.group(2) or "")
            if text:
                path = headings.enter(level, text)
                blocks.append(Block(text=text, page=1, heading_path=path, is_heading=True))
                title = title or (text if level == 1 else None)
        elif line.strip():
            pending.append(line)
        else:
            flush()
        index += 1
    flush()
    return text_document(blocks, title=title)


def _fence_end(lines: list[str], start: int, marker: str) -> int:
    """Index just past the fence opened at ``start`` (its closing line, or the end of the text)."""
    closing = re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
    for index in range(start + 1, len(lines)):
        if closing.match(lines[index]):
            return index + 1
    return len(lines)


def _heading_text(raw: str) -> str:
    """A heading's words: badges (images) and HTML tags dropped, links reduced to their label."""
    text = collapse_whitespace(_TAG.sub("", _LINK.sub(r"\1", _IMAGE.sub("", raw))))
    return text or collapse_whitespace(raw)
