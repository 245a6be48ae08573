"""Plain data passed between stages: parsed pages and blocks, and chunks."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Block:
    """A run of text on one page, in reading order.

    ``heading_path`` is the chain of headings the block sits under, outermost
    first (empty when the format exposes none). ``is_heading`` marks a block
    that is itself a heading.
    """

    text: str
    page: int  # 1-based page number; 1 for formats without pages
    heading_path: tuple[str, ...] = ()
    is_heading: bool = False
    ocr_confidence: float | None = None  # mean recognition confidence 0..1 when OCR read it; None: text layer


@dataclass(slots=True)
class ParsedDocument:
    """What a parser returns: blocks in reading order plus the page count."""

    blocks: list[Block]
    page_count: int
    title: str | None = None
    warnings: list[str] = field(default_factory=list)
    parsed_to: int | None = None  # last page parsed when a page range stopped early (OCR budget); None: all of it
    ocr_pending: list[int] = field(default_factory=list)  # pages after parsed_to in the range that want OCR


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document sized for the embedding model (token counts use its tokenizer)."""

    ordinal: int
    text: str
    token_count: int
    page_start: int
    page_end: int
    heading_path: tuple[str, ...] = ()
    context: str = ""  # document title and heading path, embedded and keyword-indexed with `text`
    ocr_confidence: float | None = None  # mean OCR confidence of its OCR'd text, 0..1; None: no OCR'd text

    @property
    def ocr(self) -> bool:
        """True when some of the chunk's text was read from page images."""
        return self.ocr_confidence is not None
