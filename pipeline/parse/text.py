"""Plain text and Markdown: decode the bytes, split at blank lines, follow ATX headings."""

from __future__ import annotations

import codecs
import re

from docpipe.errors import UnsupportedType
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
_SNIFF_CHARS = 65536  # characters looked at to tell binary data from text
_MIN_BINARY_SAMPLE = 32  # characters needed to call a legacy-encoded file binary
MAX_CONTROL_SHARE = 0.05  # share of control characters above which a "text" file is binary
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Each class excludes its own opening character, so a run of "[" or "<" is scanned once (linear).
_IMAGE = re.compile(r"!\[[^\[\]]*\]\([^()]*\)")
_LINK = re.compile(r"\[([^\[\]]*)\]\([^()]*\)")
_TAG = re.compile(r"<[^<>]+>")


def decode_text(data: bytes) -> str:
    """Decode text: a byte-order mark wins, then BOM-less UTF-16, UTF-8, cp1252 and finally latin-1.

    UTF-16 is sniffed before UTF-8 because ASCII in UTF-16 (NULs between letters) is also valid
    UTF-8. Bytes that are none of these and decode to many control characters are binary data
    (random bytes are never valid UTF-8): ``UnsupportedType``, rather than indexed mojibake.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                if encoding == "utf-32":  # FF FE 00 00 is also UTF-16 LE starting with U+0000
                    continue
                return data.decode(encoding, errors="replace")
    if utf16 := _sniff_utf16(data[:_SNIFF_BYTES]):
        return data.decode(utf16, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    _reject_binary(text)
    return text


def _reject_binary(text: str) -> None:
    """Raise ``UnsupportedType`` when over ``MAX_CONTROL_SHARE`` of the first characters are
    controls (other than tab, newlines and form feed) or U+FFFD: random bytes, not text."""
    sample = text[:_SNIFF_CHARS]
    if len(sample) < _MIN_BINARY_SAMPLE:  # too short to judge: a few stray bytes are cleaned away
        return
    controls = len(_CONTROL.findall(sample))
    if controls > MAX_CONTROL_SHARE * len(sample):
        share = 100 * controls / len(sample)
        raise UnsupportedType(f"binary data, not text: {share:.0f}% of the first characters are control characters")


def _sniff_utf16(head: bytes) -> str | None:
    """UTF-16 of mostly-Latin text has a NUL in every other byte; say which byte order, if so."""
    head = head[2:]  # the first character may be U+0000 (both bytes NUL)
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
        if heading := _atx_heading(line):
            flush()
            level, text = heading[0], _heading_text(heading[1])
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


def _atx_heading(line: str) -> tuple[int, str] | None:
    """(level, raw text) of an ATX heading line ("## Title ##"), else None.

    String methods, not a regex: the old pattern's lazy text before an optional closing
    sequence backtracked quadratically on a heading followed by 300,000 spaces.
    """
    stripped = line.lstrip(" ")
    if len(line) - len(stripped) > 3 or not stripped.startswith("#"):
        return None
    rest = stripped.lstrip("#")
    level = len(stripped) - len(rest)
    if level > 6 or (rest and rest[0] not in " \t"):
        return None
    rest = rest.strip(" \t")
    body = rest.rstrip("#")
    if not body or body[-1] in " \t":  # a closing run of "#" (or a heading of only "#")
        rest = body.rstrip(" \t")
    return level, rest


def _heading_text(raw: str) -> str:
    """A heading's words: badges (images) and HTML tags dropped, links reduced to their label."""
    text = collapse_whitespace(_TAG.sub("", _LINK.sub(r"\1", _IMAGE.sub("", raw))))
    return text or collapse_whitespace(raw)
