"""A .docx whose text dwarfs its file stops at parse.max_chars inside the parser, not after it."""

from __future__ import annotations

import io

import docx
import pytest

from docpipe.config import ParseLimits
from docpipe.errors import TooLarge
from docpipe.parse import DOCX, SandboxedParser, parse_bytes


def docx_of(paragraphs: int, line: str) -> bytes:
    document = docx.Document()
    for _ in range(paragraphs):
        document.add_paragraph(line)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


FLOOD = docx_of(2000, "flood " * 200)  # 2.4 M characters in a file of a few KiB


def test_the_reader_stops_at_the_limit() -> None:
    assert len(FLOOD) < 100_000
    with pytest.raises(TooLarge, match=r"more than 100000 characters of text \(parse.max_chars\); stopped reading"):
        parse_bytes(FLOOD, DOCX, max_pages=10, max_chars=100_000)
    whole = parse_bytes(FLOOD, DOCX, max_pages=10)  # no limit: everything
    assert sum(len(b.text) for b in whole.blocks) == 2000 * len(("flood " * 200).strip())


def test_at_the_limit_is_allowed() -> None:
    small = docx_of(3, "x" * 100)
    assert sum(len(b.text) for b in parse_bytes(small, DOCX, max_pages=10, max_chars=300).blocks) == 300
    with pytest.raises(TooLarge):
        parse_bytes(small, DOCX, max_pages=10, max_chars=299)


def test_the_sandbox_child_applies_the_limit() -> None:
    with (
        SandboxedParser(ParseLimits(max_chars=50_000, timeout_s=60)) as parser,
        pytest.raises(TooLarge, match="stopped reading after 5"),  # the child's reason, not the parent's
    ):
        parser.parse(FLOOD, DOCX)
