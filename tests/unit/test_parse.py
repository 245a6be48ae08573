"""Format parsers run in-process: detection, text/Markdown/HTML/DOCX, cleaning, errors."""

from __future__ import annotations

import codecs
import io
import zipfile
from pathlib import Path

import docx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe.errors import CorruptDocument, EmptyDocument, UnsupportedType
from docpipe.parse import SUPPORTED_MEDIA_TYPES, detect_media_type, parse_bytes
from docpipe.parse.common import clean_text
from docpipe.parse.media import DOCX, HTML, MARKDOWN, PDF, TEXT
from docpipe.parse.text import decode_text, parse_markdown
from docpipe.types import ParsedDocument

FORBIDDEN = {chr(c) for c in [*range(0x09), *range(0x0B, 0x20), 0x7F]}


def parse(data: bytes, media_type: str) -> ParsedDocument:
    return parse_bytes(data, media_type, max_pages=100)


def texts(doc: ParsedDocument) -> list[str]:
    return [block.text for block in doc.blocks]


# --- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("report.bin", b"%PDF-1.7\n%\xe2\xe3", PDF),
        ("report.txt", b"%PDF-1.4 mislabelled", PDF),  # magic bytes beat the extension
        ("upload", b"PK\x03\x04\x14\x00\x06\x00[Content_Types].xml...word/document.xml", DOCX),
        ("Notes.DOCX", b"PK\x03\x04 a zip without the word/ part in the head", DOCX),
        ("notes.txt", b"hello", TEXT),
        ("README.md", b"# Title", MARKDOWN),
        ("guide.markdown", b"# Title", MARKDOWN),
        ("page.HTM", b"<p>hi", HTML),
        ("page.html", b"<p>hi", HTML),
        ("no-extension", b"  <!DOCTYPE html><html>", HTML),
        ("archive.zip", b"PK\x03\x04 just a zip", None),
        ("photo.bin", b"\x89PNG\r\n\x1a\n", "image/png"),  # images are documents, read by OCR
        ("clip.gif", b"GIF89a", None),
        ("sheet.xlsx", b"PK\x03\x04 xl/workbook.xml", None),
    ],
)
def test_detect_media_type(name: str, head: bytes, expected: str | None) -> None:
    assert detect_media_type(name, head) == expected
    assert expected is None or expected in SUPPORTED_MEDIA_TYPES


def test_corpus_files_are_detected(corpus_dir: Path, manifest: list[dict[str, str]]) -> None:
    expected = {"other_docx": DOCX, "other_html": HTML, "other_markdown": MARKDOWN}
    for row in manifest:
        path = corpus_dir / row["file"]
        want = PDF if path.suffix == ".pdf" else expected[row["class"]]
        assert detect_media_type(path.name, path.read_bytes()[:8192]) == want, row["file"]


# --- errors that apply to every format ---------------------------------------------------------


@pytest.mark.parametrize("media_type", ["image/gif", "application/msword", "", "text/csv"])
def test_unsupported_type(media_type: str) -> None:
    with pytest.raises(UnsupportedType, match="unsupported media type"):
        parse(b"data", media_type)


def test_media_type_parameters_are_ignored() -> None:
    assert texts(parse(b"hello", "Text/Plain; charset=utf-8")) == ["hello"]


@pytest.mark.parametrize("media_type", sorted(SUPPORTED_MEDIA_TYPES))
def test_zero_bytes_is_empty(media_type: str) -> None:
    with pytest.raises(EmptyDocument):
        parse(b"", media_type)


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (b" \n\n\t \n", TEXT),
        (b"\x00\x00\x01", TEXT),
        (b"\n\n", MARKDOWN),
        (b"<html><body><script>var x = 1;</script><nav>menu</nav></body></html>", HTML),
    ],
)
def test_no_text_parses_to_no_blocks_with_a_warning(data: bytes, media_type: str) -> None:
    doc = parse(data, media_type)
    assert doc.blocks == [] and doc.warnings == ["document has no text"]


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (b"a\x00b\x01c\x1bd\r\nnext\x7f", TEXT),
        (b"# He\x00ad\n\na\x00b\x01c\x1bd\r\nnext\x7f", MARKDOWN),
        (b"<h1>He\x00ad</h1><p>a\x00b\x01c\x1bd<br>next\x7f</p>", HTML),
    ],
)
def test_nul_and_control_characters_are_removed(data: bytes, media_type: str) -> None:
    doc = parse(data, media_type)
    assert "abcd\nnext" in texts(doc)
    for block in doc.blocks:
        assert not FORBIDDEN & set(block.text + "".join(block.heading_path)), block


def test_docx_with_nul_in_its_xml_is_corrupt() -> None:
    """XML cannot carry NUL, so a .docx with one is broken rather than text to clean."""
    source, patched = zipfile.ZipFile(io.BytesIO(make_docx())), io.BytesIO()
    with zipfile.ZipFile(patched, "w") as out:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "word/document.xml":
                data = data.replace(b"Preface", b"Pre\x00face")
            out.writestr(item, data)
    with pytest.raises(CorruptDocument, match="cannot open DOCX"):
        parse(patched.getvalue(), DOCX)


# --- plain text and Markdown -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("café ünïcode".encode(), "café ünïcode"),
        (codecs.BOM_UTF8 + "café".encode(), "café"),
        (codecs.BOM_UTF16_LE + "café".encode("utf-16-le"), "café"),
        (codecs.BOM_UTF16_BE + "café".encode("utf-16-be"), "café"),
        ("plain café text".encode("utf-16-le"), "plain café text"),  # no BOM: sniffed
        ("naïve “quotes” €5".encode("cp1252"), "naïve “quotes” €5"),
        (b"\x81\x8d caf\xe9", "\x81\x8d café"),  # bytes cp1252 leaves undefined: latin-1
    ],
)
def test_decode_text(data: bytes, expected: str) -> None:
    assert decode_text(data) == expected


def test_text_paragraphs() -> None:
    doc = parse(b"First line\nsame paragraph  \n\n  \nSecond paragraph\n", TEXT)
    assert texts(doc) == ["First line\nsame paragraph", "Second paragraph"]
    assert {(b.page, b.heading_path, b.is_heading) for b in doc.blocks} == {(1, (), False)}
    assert doc.page_count == 1


MARKDOWN_SAMPLE = b"""Intro before any heading.

# Guide #
Setup text right under the heading.

## Install [![badge](https://x/y.svg)](https://x)

```bash
pip install thing

# not a heading, inside the fence
```

### Details
Deep text.
## Usage
Use it.
# Appendix
The end.
"""


def test_markdown_headings_and_fences() -> None:
    doc = parse(MARKDOWN_SAMPLE, MARKDOWN)
    got = [(b.text.split("\n")[0], b.heading_path, b.is_heading) for b in doc.blocks]
    assert got == [
        ("Intro before any heading.", (), False),
        ("Guide", ("Guide",), True),
        ("Setup text right under the heading.", ("Guide",), False),
        ("Install", ("Guide", "Install"), True),
        ("```bash", ("Guide", "Install"), False),
        ("Details", ("Guide", "Install", "Details"), True),
        ("Deep text.", ("Guide", "Install", "Details"), False),
        ("Usage", ("Guide", "Usage"), True),
        ("Use it.", ("Guide", "Usage"), False),
        ("Appendix", ("Appendix",), True),
        ("The end.", ("Appendix",), False),
    ]
    fence = doc.blocks[4].text
    assert fence == "```bash\npip install thing\n\n# not a heading, inside the fence\n```"
    assert doc.title == "Guide"


@pytest.mark.parametrize(
    "name",
    ["readability__README.md", "qpdf__README.md", "pdfjs__README.md", "PyMuPDF__README.md"],
)
def test_corpus_markdown(corpus_dir: Path, name: str) -> None:
    doc = parse((corpus_dir / "other" / name).read_bytes(), MARKDOWN)
    headings = [b for b in doc.blocks if b.is_heading]
    assert len(headings) >= 5
    assert all(b.heading_path[-1] == b.text for b in headings)
    assert any(len(b.heading_path) >= 2 for b in doc.blocks)
    assert all("](" not in part for b in doc.blocks for part in b.heading_path)  # badges stripped


def test_corpus_markdown_sections(corpus_dir: Path) -> None:
    doc = parse((corpus_dir / "other" / "readability__README.md").read_bytes(), MARKDOWN)
    install = [b for b in doc.blocks if b.heading_path == ("Readability.js", "Installation")]
    assert any(b.text.startswith("```bash\nnpm install @mozilla/readability") for b in install)


@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("#`~ \n\t\x00\r")))
def test_markdown_never_fails_unexpectedly(source: str) -> None:
    try:
        doc = parse_markdown(source.encode("utf-8", "surrogatepass"))
    except EmptyDocument:
        return
    for block in doc.blocks:
        assert block.text.strip()
        assert not FORBIDDEN & set(block.text)
        if block.is_heading:
            assert block.heading_path[-1] == block.text


@given(st.binary())
def test_decode_and_clean_accept_any_bytes(data: bytes) -> None:
    """Any bytes decode to clean text, or are refused as binary (never mojibake of random bytes)."""
    try:
        text = clean_text(decode_text(data))
    except UnsupportedType as err:
        assert str(err).startswith("binary data, not text")
        return
    assert not FORBIDDEN & set(text)
    assert "\r" not in text
    text.encode("utf-8")  # no lone surrogates left


# --- HTML --------------------------------------------------------------------------------------


HTML_SAMPLE = """<!doctype html><html><head><title> A  page </title><style>p{}</style></head>
<body><header>Site header</header><nav><a>Home</a></nav>
<h1>Main   title</h1><p>First <b>bold</b>
   paragraph.</p>
<div>Loose div text<div>nested div</div>tail text</div>
<h2>Section</h2><ul><li>one</li><li>two<ul><li>two.a</li></ul></li></ul>
<table><tr><td>cell 1</td><td>cell 2</td></tr></table>
<pre>code  line 1
code line 2</pre><!-- a comment --><script>alert(1)</script>
<h2>Other</h2><blockquote>Quoted</blockquote><aside>Ad</aside><form>Search</form>
<p hidden>invisible</p><footer>Footer</footer></body></html>"""


def test_html_blocks_and_headings() -> None:
    doc = parse(HTML_SAMPLE.encode(), HTML)
    got = [(b.text, b.heading_path, b.is_heading) for b in doc.blocks]
    title, section, other = ("Main title",), ("Main title", "Section"), ("Main title", "Other")
    assert got == [
        ("Main title", title, True),
        ("First bold paragraph.", title, False),
        ("Loose div text", title, False),
        ("nested div", title, False),
        ("tail text", title, False),
        ("Section", section, True),
        ("one", section, False),
        ("two", section, False),
        ("two.a", section, False),
        ("cell 1", section, False),
        ("cell 2", section, False),
        ("code line 1\ncode line 2", section, False),
        ("Other", other, True),
        ("Quoted", other, False),
    ]
    assert doc.title == "A page"


def test_html_encoding_from_meta() -> None:
    page = '<html><head><meta charset="windows-1251"></head><body><p>Привет</p></body></html>'
    assert texts(parse(page.encode("windows-1251"), HTML)) == ["Привет"]


def test_html_deep_nesting_does_not_recurse() -> None:
    page = "<div>" * 5000 + "deep" + "</div>" * 5000
    assert texts(parse(page.encode(), HTML)) == ["deep"]


@pytest.mark.parametrize(
    ("name", "title_part", "min_headings"),
    [
        ("wikipedia.html", "Mozilla", 10),
        ("lwn-1.html", "LWN.net", 5),
        ("la-nacion.html", "mapuche", 1),
        ("rtl-1.html", "RTL", 1),
        ("hukumusume.html", "欲張りなイヌ", 0),
        ("qq.html", "DeepMind", 0),  # UTF-8 bytes under a stale gb2312 <meta>
    ],
)
def test_corpus_html(corpus_dir: Path, name: str, title_part: str, min_headings: int) -> None:
    doc = parse((corpus_dir / "other" / name).read_bytes(), HTML)
    assert title_part in (doc.title or "")
    assert sum(b.is_heading for b in doc.blocks) >= min_headings
    assert sum(len(b.text) for b in doc.blocks) > 200
    assert not any("function(" in b.text for b in doc.blocks)  # scripts dropped


# --- DOCX --------------------------------------------------------------------------------------


def make_docx() -> bytes:
    document = docx.Document()
    document.core_properties.title = "Handbook"
    document.add_heading("Handbook", level=0)  # the Title style
    document.add_paragraph("Preface text.")
    document.add_heading("Chapter 1", level=1)
    document.add_heading("Section 1.1", level=2)
    document.add_paragraph("Body of 1.1.")
    table = document.add_table(rows=2, cols=2)
    for row, values in zip(table.rows, [("a", "b"), ("c", "d")], strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_heading("Chapter 2", level=1)
    document.add_paragraph("")
    document.add_paragraph("Body of 2.")
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def test_docx_order_headings_and_tables() -> None:
    doc = parse(make_docx(), DOCX)
    got = [(b.text, b.heading_path, b.is_heading) for b in doc.blocks]
    ch1 = ("Handbook", "Chapter 1", "Section 1.1")
    assert got == [
        ("Handbook", ("Handbook",), True),
        ("Preface text.", ("Handbook",), False),
        ("Chapter 1", ("Handbook", "Chapter 1"), True),
        ("Section 1.1", ch1, True),
        ("Body of 1.1.", ch1, False),
        ("a | b\nc | d", ch1, False),
        ("Chapter 2", ("Handbook", "Chapter 2"), True),
        ("Body of 2.", ("Handbook", "Chapter 2"), False),
    ]
    assert doc.title == "Handbook"
    assert {b.page for b in doc.blocks} == {1}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("par-known-paragraphs.docx", [("Heading Paragraph", True), ("Normal paragraph", False)]),
        ("test.docx", [("python-docx was here!", True), ("python-docx was here too!", False)]),
    ],
)
def test_corpus_docx_headings(corpus_dir: Path, name: str, expected: list[tuple[str, bool]]) -> None:
    doc = parse((corpus_dir / "other" / name).read_bytes(), DOCX)
    assert [(b.text, b.is_heading) for b in doc.blocks] == expected
    assert doc.blocks[1].heading_path == (expected[0][0],)


def test_corpus_docx_with_comments(corpus_dir: Path) -> None:
    doc = parse((corpus_dir / "other" / "comments-rich-para.docx").read_bytes(), DOCX)
    assert "Some text worthy of note." in texts(doc)


@pytest.mark.parametrize("name", ["doc-no-coreprops.docx", "having-images.docx", "tbl-2x2-table.docx"])
def test_corpus_docx_without_text(corpus_dir: Path, name: str) -> None:
    doc = parse((corpus_dir / "other" / name).read_bytes(), DOCX)
    assert doc.blocks == [] and doc.warnings == ["document has no text"]


@pytest.mark.parametrize("data", [b"PK\x03\x04 truncated zip", b"not a zip at all", b"PK\x05\x06" + bytes(18)])
def test_corrupt_docx(data: bytes) -> None:
    with pytest.raises(CorruptDocument, match="cannot open DOCX"):
        parse(data, DOCX)
