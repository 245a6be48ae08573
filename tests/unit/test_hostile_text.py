"""Hostile text: 1 MB adversarial strings through every parser and the chunker, in linear time,
and nothing unsafe (controls, bidi overrides, BOMs, surrogates) in what comes out."""

from __future__ import annotations

import codecs
import io
import random
from pathlib import Path

import docx
import pymupdf
import pytest
import tokenizers

from docpipe.chunk import MAX_TOKEN_CHARS, chunk_blocks
from docpipe.errors import UnsupportedType
from docpipe.parse import parse_bytes
from docpipe.parse.common import MAX_HEADING_CHARS, MAX_HEADING_DEPTH, clean_text
from docpipe.parse.media import DOCX, HTML, MARKDOWN, PDF, TEXT, detect_media_type
from docpipe.types import ParsedDocument

MB = 1_000_000
# Each took minutes to hours with the backtracking regexes, or made one chunk megabytes long.
ADVERSARIAL = {
    "dots": "x" + "." * MB,  # the sentence splitter
    "cjk-stops": "。" * MB,
    "heading-spaces": "# a" + " " * MB + "b",  # the Markdown heading rule
    "brackets": "# " + "[" * (MB // 2) + "<" * (MB // 2),  # link/tag rules on a heading
    "one-word": "y" * MB,  # one WordPiece [UNK] spanning the whole text
    "blank-lines": "\n \n" * (MB // 3),
    "quotes": 'x."' + '"' * MB,
}
UNSAFE = {chr(c) for c in [*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]} | {
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff",
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def as_docx(text: str) -> bytes:
    document = docx.Document()
    document.add_heading(text[:1000], level=1)
    document.add_paragraph(text)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def as_html(text: str) -> bytes:
    return f"<html><body><h1>{text[:1000]}</h1><p>{text}</p></body></html>".encode()


def assert_clean(doc: ParsedDocument) -> None:
    for block in doc.blocks:
        for text in (block.text, *block.heading_path):
            assert not UNSAFE & set(text), repr(text[:80])
            text.encode("utf-8")  # no lone surrogates
        assert len(block.heading_path) <= MAX_HEADING_DEPTH
        assert all(len(title) <= MAX_HEADING_CHARS for title in block.heading_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("media_type", [TEXT, MARKDOWN, HTML, DOCX])
def test_one_megabyte_adversarial_input_parses_and_chunks_in_linear_time(
    tokenizer: tokenizers.Tokenizer, name: str, media_type: str
) -> None:
    text = ADVERSARIAL[name]
    data = {DOCX: as_docx, HTML: as_html}.get(media_type, str.encode)(text)
    doc = parse_bytes(data, media_type, max_pages=10)
    assert_clean(doc)
    chunks = chunk_blocks(doc.blocks, tokenizer, max_tokens=254, overlap_tokens=32)
    assert all(len(c.text) <= 254 * (MAX_TOKEN_CHARS + 1) for c in chunks)
    assert all(len(c.heading_path) <= MAX_HEADING_DEPTH for c in chunks)


@pytest.mark.timeout(60)
def test_adversarial_pdf_text_parses_and_chunks(tokenizer: tokenizers.Tokenizer) -> None:
    pdf = pymupdf.open()
    for line in ("x" + "." * 3000, "y" * 3000, "\u202eevil\u202c \ufeffbom \x85next"):
        page = pdf.new_page()
        page.insert_textbox(page.rect, line, fontsize=4)
    doc = parse_bytes(pdf.tobytes(), PDF, max_pages=10)
    assert_clean(doc)
    chunk_blocks(doc.blocks, tokenizer, max_tokens=254, overlap_tokens=32)


def test_heading_paths_are_capped_in_depth_and_length() -> None:
    markdown = "\n".join(f"{'#' * (1 + i % 6)} {'H' * 5000}{i}\n\nbody {i}" for i in range(40))
    doc = parse_bytes(markdown.encode(), MARKDOWN, max_pages=1)
    assert_clean(doc)
    deep = "".join(f"<h{1 + i % 6}>{'T' * 500}</h{1 + i % 6}>" for i in range(20))
    assert_clean(parse_bytes(f"<body>{deep}</body>".encode(), HTML, max_pages=1))


@pytest.mark.parametrize(
    "raw",
    [
        "a\x85b\x9bc",  # C1 controls (NEL, CSI)
        "left\u202eright\u202c\u2066iso\u2069",  # bidi override and isolate
        "\ufeffbom\ufeffinside",
        "lone\ud800surrogate\udfff",
        "nul\x00bell\x07esc\x1b[31m",
    ],
)
def test_clean_text_removes_every_unsafe_character(raw: str) -> None:
    cleaned = clean_text(raw)
    assert not UNSAFE & set(cleaned)
    cleaned.encode("utf-8")
    doc = parse_bytes(raw.encode("utf-8", "surrogatepass"), TEXT, max_pages=1)
    assert_clean(doc)


def test_random_bytes_in_a_txt_fail_as_binary() -> None:
    data = random.Random(10).randbytes(64 * 1024)
    with pytest.raises(UnsupportedType, match="binary data, not text"):
        parse_bytes(data, TEXT, max_pages=1)


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_decoded_even_when_it_starts_with_nul(codec: str) -> None:
    text = "\x00Grüße aus Köln, 東京 and € signs.\n\nSecond paragraph here."
    doc = parse_bytes(text.encode(codec), TEXT, max_pages=1)
    assert [b.text for b in doc.blocks] == ["Grüße aus Köln, 東京 and € signs.", "Second paragraph here."]
    bom = codecs.BOM_UTF16_LE if codec.endswith("le") else codecs.BOM_UTF16_BE
    assert parse_bytes(bom + text.encode(codec), TEXT, max_pages=1).blocks == doc.blocks


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("note.md", b"# Notes\n\nA file starts with %PDF-1.7, as in\n%PDF-1.7\n", MARKDOWN),
        ("note.txt", b"The magic is %PDF-1.4 here", TEXT),
        ("scan.pdf", b"\x00\x01junk\n%PDF-1.7\n", PDF),  # a little junk before the header
        ("download", b"HTTP junk\r\n%PDF-1.5\n", PDF),
        ("report.txt", b"%PDF-1.4\n", PDF),  # a real header at the start wins over the name
        ("mention", b"text %PDF without a version", None),
    ],
)
def test_pdf_sniffing_needs_the_header_at_the_start(name: str, head: bytes, expected: str | None) -> None:
    assert detect_media_type(name, head) == expected
