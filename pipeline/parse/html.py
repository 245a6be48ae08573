"""HTML: visible text of block elements in document order, with h1–h6 as the heading path."""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString

from docpipe.parse.common import HeadingPath, clean_text, collapse_whitespace, text_document
from docpipe.types import Block, ParsedDocument

_DROPPED = frozenset(
    {"script", "style", "noscript", "nav", "footer", "header", "aside", "form", "svg", "template"}
    | {"iframe", "object", "canvas", "button", "select", "head"}
)
_BLOCKS = frozenset(
    {"p", "li", "pre", "blockquote", "td", "th", "div", "section", "article", "main", "body"}
    | {"ul", "ol", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "caption"}
    | {"figure", "figcaption", "address", "details", "summary", "fieldset", "hr", "center"}
    | {"h1", "h2", "h3", "h4", "h5", "h6", "hgroup"}
)
_HEADING = re.compile(r"^h([1-6])$")
_SPACES = re.compile(r"[^\S\n]+")


class _BlockCollector:
    """Gathers inline text until a block boundary, then emits it as one block."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.headings = HeadingPath()
        self._parts: list[str] = []

    def add(self, text: str) -> None:
        self._parts.append(text)

    def flush(self, *, heading_level: int | None = None) -> None:
        lines = (_SPACES.sub(" ", line).strip() for line in clean_text("".join(self._parts)).split("\n"))
        text = "\n".join(line for line in lines if line)
        self._parts.clear()
        if not text:
            return
        if heading_level is None:
            self.blocks.append(Block(text=text, page=1, heading_path=self.headings.path))
        else:
            text = collapse_whitespace(text)
            path = self.headings.enter(heading_level, text)
            self.blocks.append(Block(text=text, page=1, heading_path=path, is_heading=True))


def _hidden(tag: Tag) -> bool:
    return tag.name in _DROPPED or tag.has_attr("hidden") or tag.get("aria-hidden") == "true"


def _walk(root: Tag, out: _BlockCollector) -> None:
    """Visit ``root`` in document order without recursion (deeply nested pages are common)."""
    stack: list[tuple[Tag | NavigableString, bool]] = [(root, False)]
    pre_depth = 0
    while stack:
        node, closing = stack.pop()
        if isinstance(node, NavigableString):
            if not isinstance(node, PreformattedString):  # comments, doctypes, CDATA
                out.add(str(node) if pre_depth else re.sub(r"\s+", " ", str(node)))
            continue
        heading = _HEADING.match(node.name)
        if closing:
            pre_depth -= node.name == "pre"
            if heading or node.name in _BLOCKS:
                out.flush(heading_level=int(heading.group(1)) if heading else None)
            continue
        if _hidden(node):
            continue
        if node.name == "br":
            out.add("\n")
            continue
        if heading or node.name in _BLOCKS:
            out.flush()
        pre_depth += node.name == "pre"
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(node.contents))


def parse_html(data: bytes) -> ParsedDocument:
    """HTML: one block per block element, all on page 1."""
    try:  # valid UTF-8 is UTF-8 whatever <meta charset> claims (pages are often re-encoded)
        markup: str | bytes = data.decode("utf-8-sig").replace("\x00", "")  # lxml makes NUL U+FFFD
    except UnicodeDecodeError:
        markup = data  # Beautiful Soup sniffs the BOM, <meta charset> and the bytes
    soup = BeautifulSoup(markup, "lxml")
    title = soup.title.get_text() if soup.title else None
    out = _BlockCollector()
    _walk(soup.body or soup, out)
    out.flush()
    return text_document(out.blocks, title=title)
