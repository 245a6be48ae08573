"""Does a PDF page need OCR? Decided from the page itself, cheaply, before any rendering.

A page is OCR'd when its text layer is missing or a few characters (a scan, perhaps with a
stamped page number), when an image covers most of it and the text layer is short (a scan with
a caption), or when the layer is mostly garbage (U+FFFD or private-use glyphs from a font
without a Unicode map). A page with a good text layer keeps it, so a born-digital PDF costs
what it did; only short pages pay for the image-coverage check.
"""

from __future__ import annotations

from dataclasses import dataclass

import pymupdf

FEW_CHARS = 32  # non-space characters below which a text layer counts as missing
SHORT_CHARS = 200  # non-space characters below which an image-covered page is read by OCR
IMAGE_COVER = 0.5  # share of the page area covered by images that makes it an image page
GARBAGE_SHARE = 0.3  # share of U+FFFD / private-use / unassigned characters that makes a layer garbage
DRAWN_BYTES = 256  # content-stream bytes above which a text-less page may hold vector-drawn text


@dataclass(frozen=True, slots=True)
class PageFacts:
    """What the decision looks at: counts from the text layer, image cover, content size."""

    chars: int  # non-space characters in the text layer
    bad_chars: int  # of those, U+FFFD, private-use or unassigned
    image_cover: float = 0.0  # share of the page area under images, 0..1 (computed for short pages only)
    has_images: bool = False
    content_bytes: int = 0  # size of the page's content streams, bytes


def ocr_reason(facts: PageFacts, mode: str) -> str | None:
    """Why the page is OCR'd under ``mode`` ("auto", "off", "force"), or None to keep its text layer."""
    if mode == "off":
        return None
    if mode == "force":
        return "forced"
    if facts.chars < FEW_CHARS:
        if facts.has_images or facts.content_bytes > DRAWN_BYTES:
            return "no text layer" if facts.chars == 0 else "few characters in the text layer"
        return None  # a blank page
    if facts.bad_chars >= GARBAGE_SHARE * facts.chars:
        return "garbage text layer"
    if facts.chars < SHORT_CHARS and facts.image_cover >= IMAGE_COVER:
        return "image-covered page"
    return None


def is_bad_char(char: str) -> bool:
    """U+FFFD, private-use (BMP and planes 15-16) or a C1 control: text extraction found no real character."""
    code = ord(char)
    return code == 0xFFFD or 0xE000 <= code <= 0xF8FF or code >= 0xF0000 or 0x80 <= code <= 0x9F


def text_facts(texts: list[str]) -> tuple[int, int]:
    """(non-space characters, bad characters) of a page's text blocks."""
    chars = bad = 0
    for text in texts:
        for char in text:
            if not char.isspace():
                chars += 1
                bad += is_bad_char(char)
    return chars, bad


def page_facts(page: pymupdf.Page, texts: list[str]) -> PageFacts:
    """The facts of one page; images and content size are only looked at on short pages."""
    chars, bad = text_facts(texts)
    if chars >= SHORT_CHARS:
        return PageFacts(chars, bad)
    images = page.get_images(full=False)
    cover = _image_cover(page) if images else 0.0
    try:
        content = len(page.read_contents())
    except Exception:  # an unreadable content stream draws nothing we could find
        content = 0
    return PageFacts(chars, bad, image_cover=cover, has_images=bool(images), content_bytes=content)


def _image_cover(page: pymupdf.Page) -> float:
    """Share of the page covered by its largest image (overlaps make a sum misleading), 0..1."""
    area = abs(page.rect)
    if not area:
        return 0.0
    largest = 0.0
    for info in page.get_image_info():
        box = pymupdf.Rect(info["bbox"]) & page.rect
        largest = max(largest, abs(box))
    return min(largest / area, 1.0)
