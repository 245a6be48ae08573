"""Contextual headers: title and heading path carried into what is embedded, within the token budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from docpipe.chunk import ChunkTokenizer, chunk_document
from docpipe.chunk_context import header_budget, header_path, plain_tokenizer, with_headers
from docpipe.types import Block, Chunk


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path):
    from tokenizers import Tokenizer

    return plain_tokenizer(Tokenizer.from_file(str(minilm_dir / "tokenizer.json")))  # the file pads to 128


def test_header_path_drops_blanks_and_repeats() -> None:
    assert header_path("Annual Report", ("Annual  report", "Risks", "")) == ["Annual Report", "Risks"]
    assert header_path(None, ()) == []
    assert header_path("  ", ("A", "A", "B")) == ["A", "B"]


def test_header_is_not_repeated_when_the_text_starts_with_it(tokenizer) -> None:
    chunks = [
        Chunk(0, "Risks\n\nMarkets may fall.", 8, 1, 1, ("Risks",)),
        Chunk(1, "Markets may rise too.", 5, 2, 2, ("Risks",)),
    ]
    out = with_headers(chunks, "Annual Report", tokenizer, budget=32)
    assert [c.context for c in out] == ["Annual Report", "Annual Report > Risks"]
    assert [c.text for c in out] == [c.text for c in chunks]  # the page's text is untouched
    embedded = "Annual Report > Risks\n\nMarkets may rise too."
    assert out[1].token_count == len(tokenizer.encode(embedded, add_special_tokens=False).ids)


def test_budget_is_capped_and_long_headers_are_cut(tokenizer) -> None:
    long_title = "word " * 200
    budget = header_budget(long_title, [()], tokenizer, 128)
    assert budget == 128 // 4
    [out] = with_headers([Chunk(0, "Body.", 2, 1, 1)], long_title, tokenizer, budget)
    assert len(tokenizer.encode(out.context, add_special_tokens=False).ids) <= budget


def test_every_embedded_chunk_fits_the_model(tokenizer) -> None:
    sentences = " ".join(f"Sentence number {i} says something about topic {i % 7}." for i in range(200))
    blocks = [
        Block("A Long Study of Many Things", 1, ("A Long Study of Many Things",), is_heading=True),
        Block(sentences, 1, ("A Long Study of Many Things",)),
        Block("Methods and Materials", 2, ("A Long Study of Many Things", "Methods and Materials"), is_heading=True),
        Block(sentences, 2, ("A Long Study of Many Things", "Methods and Materials")),
    ]
    tok = ChunkTokenizer(tokenizer, 128)
    chunks = chunk_document(blocks, tok, overlap_tokens=16, title="A Long Study of Many Things")
    assert len(chunks) > 4
    for chunk in chunks:
        embedded = f"{chunk.context}\n\n{chunk.text}" if chunk.context else chunk.text
        assert len(tokenizer.encode(embedded, add_special_tokens=False).ids) <= 128
    assert any("Methods and Materials" in c.context for c in chunks)
    assert all(c.context.startswith("A Long Study of Many Things") for c in chunks[1:])


def test_a_short_document_is_one_chunk_with_no_header_over_its_own_title(tokenizer) -> None:
    blocks = [Block("Title Here", 1, ("Title Here",), is_heading=True), Block("Short body.", 1, ("Title Here",))]
    [chunk] = chunk_document(blocks, ChunkTokenizer(tokenizer, 128), overlap_tokens=16, title="Title Here")
    assert chunk.text == "Title Here\n\nShort body." and chunk.context == ""
