"""Bytes in, ``ParsedDocument`` out: one parser per format, run in a crash-proof child process.

``parse_bytes`` parses in the calling process (the sandbox child and unit tests use it);
workers use ``SandboxedParser``, which runs it in a child with a time and memory limit.
Format parsers are imported on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING

from docpipe.errors import EmptyDocument, UnsupportedType
from docpipe.parse.media import (
    DOCX,
    HTML,
    IMAGES,
    MARKDOWN,
    PDF,
    SUPPORTED_MEDIA_TYPES,
    TEXT,
    detect_media_type,
    normalize_media_type,
    page_range,
    with_page_range,
)
from docpipe.parse.sandbox import SandboxedParser, StoredBytes
from docpipe.types import ParsedDocument

if TYPE_CHECKING:
    from docpipe.config import OcrConfig

__all__ = [
    "IMAGES",
    "PDF",
    "SUPPORTED_MEDIA_TYPES",
    "SandboxedParser",
    "StoredBytes",
    "detect_media_type",
    "normalize_media_type",
    "parse_bytes",
    "with_page_range",
]

_PARSERS = {  # media type -> (module, function); the function takes (data) or (data, max_pages=)
    PDF: ("docpipe.parse.pdf", "parse_pdf"),
    TEXT: ("docpipe.parse.text", "parse_text"),
    MARKDOWN: ("docpipe.parse.text", "parse_markdown"),
    HTML: ("docpipe.parse.html", "parse_html"),
    DOCX: ("docpipe.parse.docx", "parse_docx"),
    **{image: ("docpipe.parse.image", "parse_image") for image in IMAGES},
}


def parse_bytes(
    data: bytes,
    media_type: str,
    *,
    max_pages: int,
    ocr: OcrConfig | None = None,
    ocr_budget: int | None = None,
    max_chars: int | None = None,
) -> ParsedDocument:
    """Parse ``data`` in this process; ``max_pages`` (pages) applies to paged formats.

    ``max_chars`` (parse.max_chars) stops a .docx early, whose text can be far larger than its file;
    the sandbox's parent checks every format's result against it too.

    ``ocr`` (None: off) reads scanned PDF pages and images; ``ocr_budget`` (pages) stops a PDF
    range before it would OCR more pages than that (see ``parse_pdf``)."""
    kind = normalize_media_type(media_type)
    if kind not in _PARSERS:
        raise UnsupportedType(f"unsupported media type: {media_type or '(none)'}")
    if not data:
        raise EmptyDocument("document is empty (0 bytes)")
    module, function = _PARSERS[kind]
    parse = getattr(importlib.import_module(module), function)
    if kind == PDF:
        return parse(data, max_pages=max_pages, pages=page_range(media_type), ocr=ocr, ocr_budget=ocr_budget)
    if kind in IMAGES:
        return parse(data, max_pages=max_pages, pages=page_range(media_type), ocr=ocr)
    if kind == DOCX:
        return parse(data, max_chars=max_chars)
    return parse(data)


def preload_parsers() -> None:
    """Import every format parser now (the sandbox child pays pymupdf's ~1 s import once)."""
    for module, _ in _PARSERS.values():
        importlib.import_module(module)
    # ~0.4 s per forked OCR helper otherwise (the models load there). Without it (OpenCV without
    # libGL, say) other formats still parse and the OCR helper reports the error per page.
    with contextlib.suppress(ImportError):
        importlib.import_module("rapidocr_onnxruntime")
