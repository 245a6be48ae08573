"""Token-aware chunking: pack parsed blocks into chunks that fit the embedding model.

Every block is tokenised once (``encode_batch``, no special tokens) into one
token stream for the whole document, and each token records the strength of
the boundary in front of it: block, sentence, word, pre-token piece or bare
token. A chunk is a range of that stream: it ends at the last boundary of the
strongest kind that fits, a heading starts a new chunk, and each chunk after
the first repeats the tail of the previous one from a sentence or word start.
The rendered text of every chunk is re-tokenised once (one batch) to check
and store its count; a cut inside a word can re-tokenise to more tokens, and
such a chunk is shrunk until it fits.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from docpipe.chunk_context import header_budget, plain_tokenizer, with_headers
from docpipe.types import Block, Chunk

if TYPE_CHECKING:
    import tokenizers

__all__ = ["ChunkTokenizer", "chunk_blocks", "chunk_document", "chunk_tokenizer"]

# Strength of the boundary in front of a token; a cut at level k may use any stronger boundary.
_TOKEN, _PIECE, _WORD, _SENTENCE, _BLOCK = range(5)
_CUT_LEVELS = (_BLOCK, _SENTENCE, _WORD, _PIECE)  # preferred first; bare tokens are the last resort

_SEPARATOR = "\n\n"  # between the texts of two blocks in one chunk
MAX_TOKEN_CHARS = 100  # characters one token may span; longer ones (a WordPiece [UNK] word) are cut
_MIN_SECTION_BODY = 8  # tokens of non-heading text that make a chunk worth closing at a heading

# A run of sentence-ending punctuation (with closing quotes) then space, or a CJK full stop.
# Linear: a match may only start at the first mark of a run (the lookbehinds), and possessive
# quantifiers never give characters back, so no position is scanned more than a constant number
# of times ("x" + 400,000 dots took minutes with the backtracking form).
_SENTENCE_END = re.compile(
    r"""(?:(?<=[^\s.!?…])[.!?…]++["'”’)\]]*+\s++|(?<![。！？])[。！？]++[」』”’）"']*+\s*+)(?=\S)"""
)
_WORD_BEFORE = re.compile(r"""[^\s(\["'“‘]+$""")
_ABBREVIATION_WORDS = """
    mr mrs ms mx dr prof sr jr st mt vs etc e.g i.e cf al approx fig figs eq eqs no nos vol vols
    p pp ch chap sec art ed eds dept inc ltd co corp est jan feb mar apr jun jul aug sep sept oct
    nov dec u.s u.k a.m p.m ph.d
"""
_ABBREVIATIONS = frozenset(_ABBREVIATION_WORDS.split())  # a period after these rarely ends a sentence
_CJK_RANGES = (
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFF00, 0xFFEF),  # full-width forms
    (0x20000, 0x2FFFF),
)


@dataclass(frozen=True)
class ChunkTokenizer:
    """The embedding model's tokenizer and the token budget of one embedded chunk (header included)."""

    tokenizer: tokenizers.Tokenizer
    max_tokens: int


@lru_cache(maxsize=8)
def chunk_tokenizer(model: str, cache_dir: Path, max_tokens: int) -> ChunkTokenizer:
    """Load only the tokenizer of `model` (no weights); cap chunks at its max sequence length."""
    from docpipe.embed.base import load_fast_tokenizer
    from docpipe.embed.st_config import read_st_config, resolve_model_dir

    st_config = read_st_config(resolve_model_dir(model, cache_dir=cache_dir))
    tok, _pad_id = load_fast_tokenizer(st_config)
    special = len(tok.encode("", add_special_tokens=True).ids)
    return ChunkTokenizer(plain_tokenizer(tok), max(8, min(max_tokens, st_config.max_tokens - special)))


def chunk_document(
    blocks: Sequence[Block], tok: ChunkTokenizer, *, overlap_tokens: int, title: str | None = None
) -> list[Chunk]:
    """Chunks of one document, each with its contextual header, all within `tok.max_tokens` when embedded.

    The header (title and heading path) takes its room from the chunk's budget,
    so the model never truncates the text it embeds.
    """
    plain = plain_tokenizer(tok.tokenizer)
    budget = header_budget(title, [b.heading_path for b in blocks], plain, tok.max_tokens)
    room = tok.max_tokens - budget
    chunks = chunk_blocks(blocks, plain, max_tokens=room, overlap_tokens=min(overlap_tokens, room // 2))
    return with_headers(chunks, title, plain, budget)


def chunk_blocks(
    blocks: Sequence[Block],
    tokenizer: tokenizers.Tokenizer,
    *,
    max_tokens: int,
    overlap_tokens: int,
) -> list[Chunk]:
    """Split `blocks` into chunks of at most `max_tokens` tokens (no special tokens counted).

    Each chunk after the first starts with about `overlap_tokens` tokens from the
    end of the previous one, except where a new section (heading) starts.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError(f"overlap_tokens must be in [0, max_tokens={max_tokens}), got {overlap_tokens}")
    plain = plain_tokenizer(tokenizer)
    stream = _TokenStream.build(blocks, plain)
    if stream.size == 0:
        return []
    pieces = _Planner(stream, plain, max_tokens, overlap_tokens).plan()
    return [stream.chunk(ordinal, piece) for ordinal, piece in enumerate(pieces)]


def _count_tokens(tokenizer: tokenizers.Tokenizer, texts: list[str]) -> list[int]:
    """Token counts of `texts`, without special tokens; skips offsets where the library allows."""
    encode = getattr(tokenizer, "encode_batch_fast", None) or tokenizer.encode_batch
    return [len(encoding.ids) for encoding in encode(texts, add_special_tokens=False)]


def _is_cjk(char: str) -> bool:
    """Whether `char` is a CJK ideograph or CJK punctuation: text with no spaces between words."""
    code = ord(char)
    return code >= 0x3000 and any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    """Whether a `_SENTENCE_END` match really ends a sentence (not an abbreviation or initial)."""
    mark = text[match.start()]
    if mark in "。！？":
        return True
    if text[match.end()].islower():
        return False
    if mark != ".":
        return True
    before = _WORD_BEFORE.search(text, max(0, match.start() - 16), match.start())
    if before is None:
        return True
    word = before.group()
    return not ((len(word) == 1 and word.isalpha()) or word.lower() in _ABBREVIATIONS)


def _token_strengths(text: str, starts: list[int], ends: list[int], word_ids: list[int | None]) -> bytearray:
    """The boundary strength in front of each token of one block (its first token: a block start)."""
    strengths = bytearray(len(starts))
    strengths[0] = _BLOCK
    pairs = zip(starts[1:], ends, word_ids[1:], word_ids, strict=False)
    for i, (start, previous_end, word, previous_word) in enumerate(pairs, 1):
        if start > previous_end:  # a gap: whitespace (or characters the tokenizer drops)
            strengths[i] = _WORD
        elif word != previous_word:  # a new pre-token: punctuation, a CJK character, a space-led piece
            char, before = text[start : start + 1] or " ", text[start - 1 : start] or " "
            spaced = char.isspace() or before.isspace() or _is_cjk(char) or _is_cjk(before)
            strengths[i] = _WORD if spaced else _PIECE
    for match in _SENTENCE_END.finditer(text):
        if not _ends_sentence(text, match):
            continue
        i = bisect_right(starts, match.end()) - 1  # the token holding the next sentence's first char
        if ends[i] <= match.end():
            i += 1
        if 0 < i < len(starts):
            strengths[i] = max(strengths[i], _SENTENCE)
    return strengths


@dataclass(frozen=True, slots=True)
class _TokenStream:
    """The tokens of all non-empty blocks in order, with their boundaries and sections."""

    blocks: list[Block]
    base: list[int]  # index of each block's first token, then the total token count
    starts: list[int]  # character offset of each token in its block's text
    ends: list[int]
    strengths: bytearray  # boundary strength in front of each token, then a block boundary at the end
    sections: list[int]  # token indices where a section starts, then size
    body_before: list[int]  # non-heading tokens before each block

    @classmethod
    def build(cls, blocks: Sequence[Block], tokenizer: tokenizers.Tokenizer) -> _TokenStream:
        """Tokenise every non-blank block in one batch and index its boundaries."""
        candidates = [block for block in blocks if block.text.strip()]
        encodings = tokenizer.encode_batch([block.text for block in candidates], add_special_tokens=False)
        _cut_long_tokens(candidates, encodings, tokenizer)
        kept: list[Block] = []
        base, starts, ends, body_before = [0], [], [], [0]
        strengths = bytearray()
        for block, encoding in zip(candidates, encodings, strict=True):
            if not encoding.ids:
                continue
            block_starts = [start for start, _ in encoding.offsets]
            block_ends = [end for _, end in encoding.offsets]
            strengths += _token_strengths(block.text, block_starts, block_ends, encoding.word_ids)
            starts += block_starts
            ends += block_ends
            kept.append(block)
            base.append(len(starts))
            body_before.append(body_before[-1] + (0 if block.is_heading else len(block_starts)))
        strengths.append(_BLOCK)
        return cls(kept, base, starts, ends, strengths, _section_starts(kept, base), body_before)

    @property
    def size(self) -> int:
        """Total number of tokens."""
        return self.base[-1]

    def block_of(self, token: int) -> int:
        """Index of the block that holds `token`."""
        return bisect_right(self.base, token) - 1

    def render(self, start: int, end: int) -> str:
        """The text of tokens [start, end): each block's part verbatim, blocks joined by a blank line."""
        parts = []
        for j in range(self.block_of(start), self.block_of(end - 1) + 1):
            first, last = max(start, self.base[j]), min(end, self.base[j + 1]) - 1
            parts.append(self.blocks[j].text[self.starts[first] : self.ends[last]].strip())
        return _SEPARATOR.join(parts)

    def chunk(self, ordinal: int, piece: _Piece) -> Chunk:
        """The `Chunk` for a planned piece: pages of all its text, heading path of its own first block,
        and the OCR confidence of its OCR'd blocks (mean weighted by their tokens in the piece)."""
        spanned = range(self.block_of(piece.start), self.block_of(piece.end - 1) + 1)
        pages = [self.blocks[j].page for j in spanned]
        return Chunk(
            ocr_confidence=self._ocr_confidence(spanned, piece),
            ordinal=ordinal,
            text=piece.text,
            token_count=piece.token_count,
            page_start=min(pages),
            page_end=max(pages),
            heading_path=self.blocks[self.block_of(piece.content)].heading_path,
        )

    def _ocr_confidence(self, spanned: range, piece: _Piece) -> float | None:
        weighted = tokens = 0.0
        for j in spanned:
            confidence = self.blocks[j].ocr_confidence
            if confidence is not None:
                count = min(piece.end, self.base[j + 1]) - max(piece.start, self.base[j])
                weighted += confidence * count
                tokens += count
        return round(weighted / tokens, 4) if tokens else None

    def body_tokens(self, start: int, block_start: int) -> int:
        """Non-heading tokens in [start, block_start), where a block starts at token `block_start`."""
        j = self.block_of(start)
        within = 0 if self.blocks[j].is_heading else start - self.base[j]
        return self.body_before[self.block_of(block_start)] - self.body_before[j] - within

    def first_boundary(self, level: int, lowest: int, below: int) -> int | None:
        """The first token in [lowest, below) with a boundary of at least `level` in front."""
        found = [i for value in range(level, _BLOCK + 1) if (i := self.strengths.find(value, lowest, below)) >= 0]
        return min(found, default=None)

    def last_boundary(self, level: int, lowest: int, below: int) -> int | None:
        """The last token in [lowest, below) with a boundary of at least `level` in front."""
        found = max(self.strengths.rfind(value, lowest, below) for value in range(level, _BLOCK + 1))
        return found if found >= 0 else None

    def starts_section(self, token: int) -> bool:
        """Whether a new section starts at `token`."""
        k = bisect_left(self.sections, token)
        return self.sections[k] == token and token < self.size

    def section_start(self, token: int) -> int:
        """First token of the section that holds `token` (0 before the first heading)."""
        k = bisect_right(self.sections, token) - 1
        return self.sections[k] if k >= 0 else 0


def _cut_long_tokens(blocks: list[Block], encodings: list, tokenizer: tokenizers.Tokenizer) -> None:
    """Cut, in place, every token longer than ``MAX_TOKEN_CHARS`` characters down to that length.

    WordPiece makes a word of more than 100 characters one ``[UNK]`` whose offsets span the whole
    word, so a 1 MB run without spaces would become a 1 MB chunk (and tsvector); such a run
    is noise (base64, a binary dump), and its first ``MAX_TOKEN_CHARS`` characters are kept.
    """
    for i, (block, encoding) in enumerate(zip(blocks, encodings, strict=True)):
        long = [(start, end) for start, end in encoding.offsets if end - start > MAX_TOKEN_CHARS]
        if not long:
            continue
        parts, position = [], 0
        for start, end in long:
            if start < position:  # tokens sharing one long span are cut once
                continue
            parts.append(block.text[position : start + MAX_TOKEN_CHARS])
            position = end
        parts.append(block.text[position:])
        blocks[i] = replace(block, text="".join(parts))
        encodings[i] = tokenizer.encode(blocks[i].text, add_special_tokens=False)


def _section_starts(blocks: list[Block], base: list[int]) -> list[int]:
    """Token indices of headings, and of heading-path changes not announced by a heading block."""
    sections = []
    for j, block in enumerate(blocks):
        previous = blocks[j - 1] if j else None
        after_body = previous is not None and not previous.is_heading
        if block.is_heading or (after_body and block.heading_path != previous.heading_path):
            sections.append(base[j])
    return [*sections, base[-1]]


@dataclass(frozen=True, slots=True)
class _Piece:
    """One planned chunk: tokens [start, end), of which [start, content) repeat the previous chunk."""

    start: int
    content: int
    end: int
    text: str
    token_count: int


class _Planner:
    """Chooses the token ranges of the chunks over one `_TokenStream`."""

    def __init__(
        self, stream: _TokenStream, tokenizer: tokenizers.Tokenizer, max_tokens: int, overlap_tokens: int
    ) -> None:
        self.stream = stream
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.fresh_room = max_tokens - overlap_tokens  # content tokens a chunk after an overlap can hold
        self.min_body = max(1, min(_MIN_SECTION_BODY, self.fresh_room // 4))

    def plan(self) -> list[_Piece]:
        """All chunks: planned from token counts, checked in one batch, re-planned from a misfit."""
        spans = []
        content, previous_start = 0, 0
        if self.stream.size <= self.max_tokens:  # a document that fits stays one chunk, whatever its headings
            spans.append((0, 0, self.stream.size))
            content = self.stream.size
        while content < self.stream.size:
            start, end = self._next_span(content, previous_start)
            spans.append((start, content, end))
            content, previous_start = end, start
        texts = [self.stream.render(start, end) for start, _, end in spans]
        pieces = []
        for (start, content, end), text, count in zip(spans, texts, _count_tokens(self.tokenizer, texts), strict=True):
            if count > self.max_tokens:
                return self._plan_checked(pieces, content)
            pieces.append(_Piece(start, content, end, text, count))
        return pieces

    def _plan_checked(self, pieces: list[_Piece], content: int) -> list[_Piece]:
        """Finish `pieces` from token `content`, re-tokenising each chunk as it is made."""
        while content < self.stream.size:
            start, end = self._next_span(content, pieces[-1].start if pieces else 0)
            pieces.append(self._fit(start, content, end))
            content = pieces[-1].end
        return pieces

    def _next_span(self, content: int, previous_start: int) -> tuple[int, int]:
        """Start (overlap included) and end of the chunk whose own text begins at token `content`."""
        start = self._overlap_start(content, previous_start)
        return start, self._end(content, self.max_tokens - (content - start))

    def _fit(self, start: int, content: int, end: int) -> _Piece:
        """The chunk [start, end), shrunk until its text re-tokenises to at most max_tokens."""
        text = self.stream.render(start, end)
        count = len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        while count > self.max_tokens:
            if end - content > 1:
                end = self._end(content, max(1, end - content - (count - self.max_tokens)))
            elif start < content:
                start = content
            else:  # one token whose text alone re-tokenises too long: keep what fits
                text, count = self._truncate(text)
                break
            text = self.stream.render(start, end)
            count = len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return _Piece(start, content, end, text, count)

    def _truncate(self, text: str) -> tuple[str, int]:
        """The longest prefix of `text` (cut at a token end) that fits in max_tokens, and its count."""
        while True:
            encoding = self.tokenizer.encode(text, add_special_tokens=False)
            if len(encoding.ids) <= self.max_tokens:
                return text, len(encoding.ids)
            text = text[: min(encoding.offsets[self.max_tokens - 1][1], len(text) - 1)]

    def _overlap_start(self, content: int, previous_start: int) -> int:
        """Where the repeated tail of the previous chunk begins: a sentence or word start, or none."""
        stream = self.stream
        if self.overlap_tokens == 0 or content == 0 or stream.starts_section(content):
            return content
        lowest = max(content - self.overlap_tokens, previous_start, stream.section_start(content))
        first_word_end = stream.first_boundary(_WORD, content + 1, content + self.max_tokens + 1)
        if first_word_end is not None:  # leave room for the first word whole
            lowest = max(lowest, first_word_end - self.max_tokens)
        sentence = stream.first_boundary(_SENTENCE, lowest, content)
        if sentence is not None and 2 * (content - sentence) >= self.overlap_tokens:
            return sentence
        word = stream.first_boundary(_WORD, lowest, content)
        return content if word is None else word

    def _end(self, content: int, room: int) -> int:
        """End of a chunk whose own text begins at `content` and may hold `room` tokens."""
        limit = min(content + room, self.stream.size)
        cut = self._section_cut(content, limit)
        if cut is not None:
            return cut
        if limit == self.stream.size:
            return limit
        for level in _CUT_LEVELS:
            cut = self._last_cut(level, content, limit)
            if cut is not None:
                return cut
        return limit

    def _section_cut(self, content: int, limit: int) -> int | None:
        """The first section start in (content, limit] after enough body text to close the chunk."""
        sections = self.stream.sections
        k = bisect_right(sections, content)
        while sections[k] <= limit and sections[k] < self.stream.size:
            if self.stream.body_tokens(content, sections[k]) >= self.min_body:
                return sections[k]
            k += 1
        return None

    def _last_cut(self, level: int, content: int, limit: int) -> int | None:
        """The last boundary of `level` in (content, limit], unless the unit it starts is oversized.

        A unit (block, sentence, word) too big for any chunk is split anyway, so its
        head is better used to fill this chunk with a finer cut.
        """
        cut = self.stream.last_boundary(level, content + 1, limit + 1)
        if cut is None or cut == limit:
            return cut
        # Blocks and sentences must fit beside a full overlap; a word is kept whole at the overlap's cost.
        room = self.fresh_room if level >= _SENTENCE else self.max_tokens
        unit_end = self.stream.first_boundary(level, cut + 1, cut + room + 1)
        return None if unit_end is None else cut
