"""Helpers every format parser shares: text cleaning, the heading stack, the final checks."""

from __future__ import annotations

import re
from collections.abc import Iterable

from docpipe.types import Block, ParsedDocument

# Never stored: C0 controls except \t and \n (\r is turned into \n first), DEL, C1 controls,
# bidi embeddings/overrides/isolates (they can make a snippet display as other text), BOMs
# (U+FEFF anywhere), the non-characters U+FFFE/U+FFFF, and lone surrogates (Postgres text
# rejects NUL and UTF-8 cannot carry surrogates).
_FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff\ufffe\uffff\ud800-\udfff]")
_NEWLINES = re.compile(r"\r\n?")
_SPACES = re.compile(r"\s+")
MAX_SPACE_RUN = 64  # spaces kept of one run within a line (indentation survives, a 1 MB gap does not)
_SPACE_RUN = re.compile(rf"[^\S\n]{{{MAX_SPACE_RUN + 1},}}")

MAX_WARNINGS = 20  # warnings kept per document; the rest are counted
MAX_WARNING_CHARS = 300  # characters kept per warning
MAX_HEADING_CHARS = 200  # characters kept of one heading in a heading path
MAX_HEADING_DEPTH = 8  # headings kept in one heading path


def clean_text(text: str) -> str:
    """Text safe to store: \\r\\n and \\r become \\n; NUL, other controls and surrogates are dropped;
    a run of more than ``MAX_SPACE_RUN`` spaces within a line is cut to that length."""
    text = _FORBIDDEN.sub("", _NEWLINES.sub("\n", text))
    return _SPACE_RUN.sub(" " * MAX_SPACE_RUN, text)


def tidy_lines(text: str, *, keep_indent: bool = True) -> str:
    """Cleaned text without trailing spaces (and leading ones unless ``keep_indent``) or blank lines."""
    lines = (line.rstrip() if keep_indent else line.strip() for line in clean_text(text).split("\n"))
    return "\n".join(line for line in lines if line.strip()).strip("\n")


def collapse_whitespace(text: str) -> str:
    """Cleaned text on one line, with every run of whitespace made a single space."""
    return _SPACES.sub(" ", clean_text(text)).strip()


def describe(exc: BaseException) -> str:
    """An exception's message, or its class name when the message is empty."""
    return str(exc).strip() or type(exc).__name__


def truncate_warnings(lines: Iterable[str]) -> list[str]:
    """Distinct, cleaned, shortened warnings: at most ``MAX_WARNINGS`` plus a count of the rest."""
    kept: list[str] = []
    extra = 0
    for line in dict.fromkeys(collapse_whitespace(line) for line in lines):
        if not line:
            continue
        if len(kept) < MAX_WARNINGS:
            kept.append(line[:MAX_WARNING_CHARS])
        else:
            extra += 1
    if extra:
        kept.append(f"... and {extra} more warnings")
    return kept


class HeadingPath:
    """The chain of headings in force, outermost first, kept by heading level (smaller is outer).

    Bounded whatever the document says: each title is cut to ``MAX_HEADING_CHARS`` characters
    and a path keeps at most ``MAX_HEADING_DEPTH`` headings (the outermost ones and the innermost).
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> tuple[str, ...]:
        """Start a section at ``level``: deeper or equal headings close; returns the new path."""
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        if len(self._stack) >= MAX_HEADING_DEPTH:  # keep the outer path, replace the innermost
            self._stack.pop()
        self._stack.append((level, cap_heading(title)))
        return self.path

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self._stack)


def cap_heading(title: str) -> str:
    """``title`` cut to ``MAX_HEADING_CHARS`` characters (an ellipsis marks the cut)."""
    return title if len(title) <= MAX_HEADING_CHARS else title[: MAX_HEADING_CHARS - 1].rstrip() + "…"


def text_document(blocks: list[Block], *, title: str | None = None) -> ParsedDocument:
    """The result for a page-less format.

    A readable file without text (a .docx of images, say) is not an error, just as a scanned PDF
    is not: it parses to no blocks, with a warning, and ends ready with no chunks.
    """
    kept = [block for block in blocks if block.text.strip()]
    warnings = [] if kept else ["document has no text"]
    return ParsedDocument(blocks=kept, page_count=1, title=clean_title(title), warnings=warnings)


def clean_title(title: str | None) -> str | None:
    """A one-line title, or None when it is missing or blank."""
    return collapse_whitespace(title) or None if title else None
