"""Contextual headers: the document title and heading path each chunk carries into its embedding and BM25 terms.

A chunk's `text` stays what the page says; its `context` ("Title > Section >
Subsection") is prepended when the chunk is embedded and keyword-indexed, so
a chunk deep in a section still matches queries about what it is part of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from docpipe.types import Chunk

if TYPE_CHECKING:
    import tokenizers

SEPARATOR = " > "  # between the title and the headings of a context header
MAX_SHARE = 4  # a header takes at most 1/MAX_SHARE of a chunk's token budget
JOIN_TOKENS = 2  # slack for the blank line that joins header and text in the embedded string


def embedded_text(context: str, text: str) -> str:
    """What the model embeds (and the reranker scores) for a chunk: its header, a blank line, its text."""
    return f"{context}\n\n{text}" if context else text


def plain_tokenizer(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """The tokenizer itself, or a copy without its truncation and padding (which would falsify counts)."""
    if tokenizer.truncation is None and tokenizer.padding is None:
        return tokenizer
    plain = type(tokenizer).from_str(tokenizer.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def header_path(title: str | None, heading_path: Sequence[str]) -> list[str]:
    """Title then headings, blanks and repeats (a heading equal to the one before it) removed."""
    path: list[str] = []
    for part in (title or "", *heading_path):
        part = " ".join(part.split())
        if part and (not path or _key(path[-1]) != _key(part)):
            path.append(part)
    return path


def header_budget(
    title: str | None, heading_paths: Sequence[Sequence[str]], tokenizer: tokenizers.Tokenizer, max_tokens: int
) -> int:
    """Tokens to reserve in every chunk for its header: the longest header's, capped at max_tokens/MAX_SHARE."""
    tokenizer = plain_tokenizer(tokenizer)
    headers = {SEPARATOR.join(header_path(title, path)) for path in heading_paths} - {""}
    if not headers:
        return 0
    longest = max(len(e.ids) for e in tokenizer.encode_batch(sorted(headers), add_special_tokens=False))
    return min(longest + JOIN_TOKENS, max_tokens // MAX_SHARE)


def with_headers(
    chunks: Sequence[Chunk], title: str | None, tokenizer: tokenizers.Tokenizer, budget: int
) -> list[Chunk]:
    """The chunks with their `context` set, cut to `budget` tokens, and `token_count` of the embedded string.

    A heading the chunk's text already starts with is not repeated in its header.
    """
    if budget <= JOIN_TOKENS:
        return list(chunks)
    tokenizer = plain_tokenizer(tokenizer)
    contexts = []
    for chunk in chunks:
        path = header_path(title, chunk.heading_path)
        if path and _key(chunk.text).startswith(_key(path[-1])):
            path = path[:-1]
        contexts.append(_truncate(SEPARATOR.join(path), tokenizer, budget - JOIN_TOKENS))
    embedded = [embedded_text(c, chunk.text) for c, chunk in zip(contexts, chunks, strict=True)]
    counts = [len(e.ids) for e in tokenizer.encode_batch(embedded, add_special_tokens=False)]
    return [replace(c, token_count=n, context=context) for c, context, n in zip(chunks, contexts, counts, strict=True)]


def _truncate(text: str, tokenizer: tokenizers.Tokenizer, max_tokens: int) -> str:
    """`text` cut at a token end so that it has at most `max_tokens` tokens."""
    if not text:
        return text
    encoding = tokenizer.encode(text, add_special_tokens=False)
    if len(encoding.ids) <= max_tokens:
        return text
    return text[: encoding.offsets[max_tokens - 1][1]].rstrip() if max_tokens > 0 else ""
