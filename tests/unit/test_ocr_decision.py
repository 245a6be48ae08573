"""Which PDF pages need OCR: decided from the page itself, before any rendering."""

from __future__ import annotations

import pymupdf
import pytest

from docpipe.config import OcrConfig
from docpipe.parse import parse_bytes
from docpipe.parse.page_decision import PageFacts, ocr_reason, page_facts, text_facts

BODY = "A born-digital page says what it says in its text layer, word for word. " * 8


def _facts(build) -> PageFacts:
    with pymupdf.open() as doc:
        page = doc.new_page()
        build(page)
        data = doc.tobytes()
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        page = doc.load_page(0)
        texts = [b[4] for b in page.get_text("blocks") if b[6] == 0]
        return page_facts(page, texts)


def _image(page: pymupdf.Page) -> None:
    pix = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 200, 280), False)
    pix.clear_with(200)
    page.insert_image(page.rect, pixmap=pix)


def test_a_text_page_keeps_its_text_layer() -> None:
    facts = _facts(lambda page: page.insert_textbox(pymupdf.Rect(50, 50, 550, 800), BODY, fontsize=11))
    assert facts.chars > 400
    assert ocr_reason(facts, "auto") is None


def test_an_image_page_without_text_is_read() -> None:
    facts = _facts(_image)
    assert facts.chars == 0 and facts.has_images and facts.image_cover > 0.9
    assert ocr_reason(facts, "auto") == "no text layer"


def test_an_image_page_with_a_caption_is_read() -> None:
    def build(page: pymupdf.Page) -> None:
        _image(page)
        page.insert_text((60, 60), "Figure 3: the harbour office, scanned in 1962", fontsize=10)

    facts = _facts(build)
    assert 32 <= facts.chars < 200
    assert ocr_reason(facts, "auto") == "image-covered page"


def test_a_blank_page_is_not_read() -> None:
    facts = _facts(lambda page: None)
    assert ocr_reason(facts, "auto") is None


@pytest.mark.parametrize(
    ("facts", "mode", "reason"),
    [
        (PageFacts(chars=0, bad_chars=0, has_images=True), "auto", "no text layer"),
        (PageFacts(chars=3, bad_chars=0, has_images=True), "auto", "few characters in the text layer"),
        (PageFacts(chars=0, bad_chars=0, content_bytes=5000), "auto", "no text layer"),  # vector-drawn glyphs
        (PageFacts(chars=500, bad_chars=400), "auto", "garbage text layer"),
        (PageFacts(chars=500, bad_chars=10, image_cover=1.0), "auto", None),  # scanner-OCR'd layer kept
        (PageFacts(chars=500, bad_chars=0), "force", "forced"),
        (PageFacts(chars=0, bad_chars=0, has_images=True), "off", None),
    ],
)
def test_decision_rules(facts: PageFacts, mode: str, reason: str | None) -> None:
    assert ocr_reason(facts, mode) == reason


def test_private_use_and_replacement_characters_count_as_garbage() -> None:
    assert text_facts(["\ufffd\ue000\uf8ff ab"]) == (5, 3)


def test_a_born_digital_pdf_is_not_ocrd() -> None:
    with pymupdf.open() as doc:
        doc.new_page().insert_textbox(pymupdf.Rect(50, 50, 550, 800), BODY, fontsize=11)
        data = doc.tobytes()
    parsed = parse_bytes(data, "application/pdf", max_pages=10, ocr=OcrConfig())
    assert parsed.blocks and all(b.ocr_confidence is None for b in parsed.blocks)
    assert "word for word" in parsed.blocks[0].text


def test_chunks_carry_the_token_weighted_ocr_confidence(minilm_dir) -> None:
    import tokenizers

    from docpipe.chunk import chunk_blocks
    from docpipe.types import Block

    tokenizer = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    blocks = [
        Block("Typed text from the layer " * 3, 1),
        Block("scanned words read by ocr " * 3, 2, ocr_confidence=0.9),
        Block("more scanned words " * 3, 2, ocr_confidence=0.6),
        Block("another typed page of text " * 40, 3),
    ]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=64, overlap_tokens=0)
    first, last = chunks[0], chunks[-1]
    assert first.ocr and 0.6 < first.ocr_confidence < 0.9  # both OCR'd blocks, weighted by their tokens
    assert not last.ocr and last.ocr_confidence is None  # text layer only
