"""Media types docpipe can parse, and how to tell them from a file's name and first bytes."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

PDF = "application/pdf"
TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

PNG = "image/png"
JPEG = "image/jpeg"
TIFF = "image/tiff"
WEBP = "image/webp"
IMAGES: frozenset[str] = frozenset({PNG, JPEG, TIFF, WEBP})  # read by OCR

SUPPORTED_MEDIA_TYPES: frozenset[str] = frozenset({PDF, TEXT, MARKDOWN, HTML, DOCX, *IMAGES})

_BY_EXTENSION = {
    ".pdf": PDF,
    ".txt": TEXT,
    ".text": TEXT,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".docx": DOCX,
    ".png": PNG,
    ".jpg": JPEG,
    ".jpeg": JPEG,
    ".tif": TIFF,
    ".tiff": TIFF,
    ".webp": WEBP,
}
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", PNG), (b"\xff\xd8\xff", JPEG), (b"II*\x00", TIFF), (b"MM\x00*", TIFF))
_PDF_JUNK_BYTES = 1024  # bytes of junk MuPDF (like Acrobat) accepts before the "%PDF-" header
_PDF_HEADER = re.compile(rb"%PDF-\d\.\d")
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


def image_type(head: bytes) -> str | None:
    """The image media type from the first bytes of a file (WebP: a RIFF container of kind WEBP)."""
    for magic, media_type in _IMAGE_MAGIC:
        if head.startswith(magic):
            return media_type
    return WEBP if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else None


def detect_media_type(name: str, head: bytes) -> str | None:
    """The media type from magic bytes in ``head`` (the file's first few KiB), else from the
    extension of ``name``; None when docpipe has no parser for it.

    A PDF starts with ``%PDF-x.y``; a little leading junk is allowed (as readers do), but only
    at the start of a line and only when the name does not say it is another type, so a
    Markdown note that mentions ``%PDF-1.7`` stays Markdown.
    """
    by_name = _BY_EXTENSION.get(PurePosixPath(name.replace("\\", "/")).suffix.lower())
    header = _PDF_HEADER.search(head, 0, _PDF_JUNK_BYTES + 8)
    if header is not None:
        at = header.start()
        if at == 0 or (by_name in (None, PDF) and head[at - 1 : at] in (b"\n", b"\r")):
            return PDF
    if head.startswith(_ZIP_MAGIC) and b"word/" in head:
        return DOCX
    if image := image_type(head):
        return image
    if by_name:
        return by_name
    start = head.lstrip()[:64].lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return HTML
    return None
