"""Media types docpipe can parse, and how to tell them from a file's name and first bytes."""

from __future__ import annotations

from pathlib import PurePosixPath

PDF = "application/pdf"
TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

SUPPORTED_MEDIA_TYPES: frozenset[str] = frozenset({PDF, TEXT, MARKDOWN, HTML, DOCX})

_BY_EXTENSION = {
    ".pdf": PDF,
    ".txt": TEXT,
    ".text": TEXT,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".docx": DOCX,
}
_PDF_MAGIC_WITHIN = 1024  # bytes; MuPDF (like Acrobat) accepts junk before "%PDF"
_ZIP_MAGIC = b"PK\x03\x04"


def normalize_media_type(media_type: str) -> str:
    """``"Text/HTML; charset=utf-8"`` → ``"text/html"``."""
    return media_type.split(";", 1)[0].strip().lower()


def page_range(media_type: str) -> tuple[int, int] | None:
    """The ``pages=FIRST-LAST`` parameter of a media type (1-based, inclusive), if any."""
    for param in media_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "pages":
            first, _, last = value.strip().partition("-")
            return int(first), int(last)
    return None


def with_page_range(media_type: str, first: int, last: int) -> str:
    """``application/pdf`` → ``application/pdf; pages=65-128``: parse only those pages."""
    return f"{normalize_media_type(media_type)}; pages={first}-{last}"


def detect_media_type(name: str, head: bytes) -> str | None:
    """The media type from magic bytes in ``head`` (the file's first few KiB), else from the
    extension of ``name``; None when docpipe has no parser for it."""
    if b"%PDF" in head[:_PDF_MAGIC_WITHIN]:
        return PDF
    if head.startswith(_ZIP_MAGIC) and b"word/" in head:
        return DOCX
    by_name = _BY_EXTENSION.get(PurePosixPath(name.replace("\\", "/")).suffix.lower())
    if by_name:
        return by_name
    start = head.lstrip()[:64].lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return HTML
    return None
