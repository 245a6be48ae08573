"""Token-aware chunking with the real all-MiniLM-L6-v2 tokenizer: budgets, boundaries, overlap, pages."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docpipe.chunk import MAX_TOKEN_CHARS, chunk_blocks
from docpipe.types import Block, Chunk

CJK = "東京は日本の首都です。大阪は大きな都市です！京都には多くの寺がありますか？"
URL = "https://example.com/" + "/".join(f"segment{i}?q={i}&x=y_z" for i in range(120))


@pytest.fixture(scope="module")
def file_tokenizer(minilm_dir: Path) -> tokenizers.Tokenizer:
    """The tokenizer exactly as the model ships it (its tokenizer.json truncates and pads to 128)."""
    return tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def tokenizer(file_tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """The same tokenizer with truncation and padding off, for counting in the assertions."""
    plain = tokenizers.Tokenizer.from_str(file_tokenizer.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def count(tokenizer: tokenizers.Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def squeeze(text: str) -> str:
    """`text` without any whitespace: chunk texts join blocks and pieces with whitespace only."""
    return "".join(text.split())


def assert_valid(tokenizer: tokenizers.Tokenizer, blocks: list[Block], chunks: list[Chunk], max_tokens: int) -> None:
    """Budget, stored counts, ordinals, pages, and all text covered in order with nothing invented."""
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    counts = [len(e.ids) for e in tokenizer.encode_batch([c.text for c in chunks], add_special_tokens=False)]
    assert counts == [c.token_count for c in chunks]
    assert all(0 < n <= max_tokens for n in counts), max(counts, default=0)
    pages = [b.page for b in blocks if b.text.strip()]
    for chunk in chunks:
        assert min(pages) <= chunk.page_start <= chunk.page_end <= max(pages)
    source = "".join(squeeze(b.text) for b in blocks)
    for chunk in chunks:  # every chunk is verbatim source text, apart from whitespace
        assert squeeze(chunk.text) in source, chunk.text
    position = 0  # and the source appears, in order, in the chunks one after the other
    target = "".join(squeeze(c.text) for c in chunks)
    for char in source:
        position = target.find(char, position) + 1
        assert position, f"{char!r} missing or out of order"


def overlap_text(previous: str, current: str) -> str:
    """The longest head of `current` that is also the tail of `previous`."""
    best = ""
    for end in range(1, len(current) + 1):
        if previous.endswith(current[:end]):
            best = current[:end]
    return best


def numbered_sentences(n: int, start: int = 0) -> str:
    return " ".join(
        f"Sentence {i} cost $3.{i % 10}0, said Dr. Smith et al. on page {i}." for i in range(start, start + n)
    )


# --- arguments and trivial input -------------------------------------------------------------


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(10, 10), (10, 11), (10, -1), (0, 0)])
def test_rejects_overlap_not_below_budget(
    tokenizer: tokenizers.Tokenizer, max_tokens: int, overlap_tokens: int
) -> None:
    with pytest.raises(ValueError, match="tokens"):
        chunk_blocks([Block("text", 1)], tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)


@pytest.mark.parametrize("blocks", [[], [Block("", 1)], [Block("  \n\t ", 1), Block("\n", 2)]])
def test_blank_input_gives_no_chunks(tokenizer: tokenizers.Tokenizer, blocks: list[Block]) -> None:
    assert chunk_blocks(blocks, tokenizer, max_tokens=64, overlap_tokens=8) == []


def test_small_blocks_pack_into_one_chunk(tokenizer: tokenizers.Tokenizer) -> None:
    blocks = [Block("First paragraph.", 1), Block("   ", 1), Block("Second one.\n", 2), Block("Third.", 3)]
    [chunk] = chunk_blocks(blocks, tokenizer, max_tokens=64, overlap_tokens=8)
    assert chunk.text == "First paragraph.\n\nSecond one.\n\nThird."
    assert (chunk.ordinal, chunk.page_start, chunk.page_end) == (0, 1, 3)
    assert chunk.token_count == count(tokenizer, chunk.text)


# --- the budget holds for any input ----------------------------------------------------------

ADVERSARIAL = {
    "no-spaces": "x" * 20_000,
    "no-spaces-mixed": "ab1-" * 3_000,
    "cjk": CJK * 40,
    "url": f"See {URL} for details.",
    "digits": " ".join(str(10**12 + i) for i in range(800)),
    "one-long-sentence": " ".join(f"word{i}" for i in range(900)),
    "emoji-accents": "Ça déjà vu 😀 straße ÆØÅ naïve — “quoted” … " * 120,
    "mixed": f"Intro text. {CJK} {URL} {'y' * 3000} Ending sentence here. " * 6,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(16, 4), (64, 16), (254, 32), (510, 0)])
def test_adversarial_text_fits_and_is_covered(
    tokenizer: tokenizers.Tokenizer, name: str, max_tokens: int, overlap_tokens: int
) -> None:
    blocks = [Block(ADVERSARIAL[name], 1), Block("A closing paragraph.", 2)]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    # WordPiece makes a word over MAX_TOKEN_CHARS one [UNK]: the chunker keeps only its head.
    kept = [Block(re.sub(rf"\w{{{MAX_TOKEN_CHARS + 1},}}", lambda m: m.group()[:MAX_TOKEN_CHARS], b.text), b.page)
            for b in blocks]  # fmt: skip
    assert_valid(tokenizer, kept, chunks, max_tokens)
    assert all(len(c.text) <= max_tokens * (MAX_TOKEN_CHARS + 1) for c in chunks)


def test_counts_ignore_the_tokenizers_own_truncation(
    file_tokenizer: tokenizers.Tokenizer, tokenizer: tokenizers.Tokenizer
) -> None:
    """tokenizer.json truncates to 128: chunks up to 254 must still be counted, and fit, in full."""
    before = (file_tokenizer.truncation, file_tokenizer.padding)
    blocks = [Block(numbered_sentences(200), 1)]
    chunks = chunk_blocks(blocks, file_tokenizer, max_tokens=254, overlap_tokens=32)
    assert_valid(tokenizer, blocks, chunks, 254)
    assert max(c.token_count for c in chunks) > 200
    assert (file_tokenizer.truncation, file_tokenizer.padding) == before  # the caller's left as it was


# --- boundaries ------------------------------------------------------------------------------


def test_whole_blocks_are_packed_greedily(tokenizer: tokenizers.Tokenizer) -> None:
    paragraphs = [f"Paragraph {i} has a few words in it, twelve tokens or so." for i in range(30)]
    chunks = chunk_blocks([Block(p, 1) for p in paragraphs], tokenizer, max_tokens=64, overlap_tokens=0)
    assert [p for c in chunks for p in c.text.split("\n\n")] == paragraphs  # no paragraph split
    for chunk, following in itertools.pairwise(chunks):  # the next paragraph would not fit
        assert count(tokenizer, chunk.text + "\n\n" + following.text.split("\n\n")[0]) > 64


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(40, 0), (128, 32), (254, 40)])
def test_oversized_block_splits_at_sentences(
    tokenizer: tokenizers.Tokenizer, max_tokens: int, overlap_tokens: int
) -> None:
    blocks = [Block(numbered_sentences(60), 1)]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert_valid(tokenizer, blocks, chunks, max_tokens)
    for chunk in chunks:  # abbreviations and decimals are not sentence ends
        assert chunk.text.startswith("Sentence "), chunk.text[:40]
        assert re.search(r"on page \d+\.$", chunk.text), chunk.text[-40:]


@pytest.mark.parametrize(
    "text",
    [
        CJK * 6,  # full stops with no space after them
        "Mr. Smith met Dr. Jones at 3.5 p.m. on Main St. in the U.S. today. " * 12,
        "Do you see? I do! Prices rose 2.5 percent, e.g. in Jan. and Feb. (roughly). " * 12,
    ],
)
def test_sentence_splitting_keeps_abbreviations_and_cjk(tokenizer: tokenizers.Tokenizer, text: str) -> None:
    blocks = [Block(text, 1)]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=48, overlap_tokens=0)
    assert_valid(tokenizer, blocks, chunks, 48)
    for chunk in chunks:
        assert chunk.text.endswith(("。", "！", "？", "today.", "see?", "do!", "(roughly).")), chunk.text[-20:]


def test_oversized_sentence_splits_between_words(tokenizer: tokenizers.Tokenizer) -> None:
    words = [f"alpha{i}beta" for i in range(400)]  # several tokens each, no sentence end
    blocks = [Block(" ".join(words), 1)]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=50, overlap_tokens=10)
    assert_valid(tokenizer, blocks, chunks, 50)
    assert all(set(c.text.split()) <= set(words) for c in chunks)  # no word cut


def test_oversized_word_is_cut_at_tokens(tokenizer: tokenizers.Tokenizer) -> None:
    blocks = [Block(f"Start. {URL} end.", 1)]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=32, overlap_tokens=8)
    assert_valid(tokenizer, blocks, chunks, 32)
    assert len(chunks) > count(tokenizer, URL) // 32
    assert all(c.token_count >= 24 for c in chunks[1:-1])  # filled, not crumbs


# --- overlap ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(64, 16), (128, 32), (254, 32), (254, 64)])
def test_overlap_repeats_the_previous_tail_at_a_sentence(
    tokenizer: tokenizers.Tokenizer, max_tokens: int, overlap_tokens: int
) -> None:
    blocks = [Block(" ".join(f"Sentence {i} is short." for i in range(start, start + 90)), 1) for start in (0, 90)]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert len(chunks) > 3
    for previous, chunk in itertools.pairwise(chunks):
        repeated = overlap_text(previous.text, chunk.text)
        assert repeated.startswith("Sentence "), (previous.text[-80:], chunk.text[:80])
        assert overlap_tokens // 2 <= count(tokenizer, repeated) <= overlap_tokens


def test_overlap_falls_back_to_words_in_long_sentences(tokenizer: tokenizers.Tokenizer) -> None:
    words = [f"w{i}" for i in range(600)]
    chunks = chunk_blocks([Block(" ".join(words), 1)], tokenizer, max_tokens=64, overlap_tokens=12)
    for previous, chunk in itertools.pairwise(chunks):
        repeated = overlap_text(previous.text, chunk.text)
        assert 6 <= count(tokenizer, repeated) <= 12
        assert repeated.split()[0] in words  # starts at a whole word
        assert chunk.text[len(repeated)] == " "


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(8, 7), (21, 19), (64, 60)])
def test_overlap_gives_way_to_whole_words(
    tokenizer: tokenizers.Tokenizer, max_tokens: int, overlap_tokens: int
) -> None:
    words = [f"u{i}v" for i in range(300)]  # two or three tokens each
    blocks = [Block(" ".join(words), 1)]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert_valid(tokenizer, blocks, chunks, max_tokens)
    assert all(set(c.text.split()) <= set(words) for c in chunks)


def test_zero_overlap_repeats_nothing(tokenizer: tokenizers.Tokenizer) -> None:
    blocks = [Block(numbered_sentences(50), 1)]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=64, overlap_tokens=0)
    assert "".join(squeeze(c.text) for c in chunks) == squeeze(blocks[0].text)


# --- headings, sections and pages ------------------------------------------------------------


def sectioned_document() -> list[Block]:
    blocks = []
    for s in range(4):
        path = (f"Chapter {s}",)
        blocks.append(Block(f"Chapter {s}", page=s + 1, heading_path=path, is_heading=True))
        blocks.append(Block(numbered_sentences(3 + 9 * s, 100 * s), page=s + 1, heading_path=path))
    return blocks


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(64, 16), (254, 32)])
def test_headings_start_clean_chunks_and_set_paths(
    tokenizer: tokenizers.Tokenizer, max_tokens: int, overlap_tokens: int
) -> None:
    blocks = sectioned_document()
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert_valid(tokenizer, blocks, chunks, max_tokens)
    for s in range(4):
        section = [c for c in chunks if c.heading_path == (f"Chapter {s}",)]
        assert section[0].text.startswith(f"Chapter {s}\n\n")  # the heading is in the text, first
        assert all(f"Chapter {s}" not in c.text for c in chunks if c not in section)
        assert all(c.page_start == c.page_end == s + 1 for c in section)


def test_heading_over_heading_stays_with_its_text(tokenizer: tokenizers.Tokenizer) -> None:
    blocks = [
        Block("Body before the headings, long enough to be worth a chunk of its own.", 1, ("Doc",)),
        Block("Part One", 2, ("Part One",), is_heading=True),
        Block("Section A", 2, ("Part One", "Section A"), is_heading=True),
        Block("Text of section A.", 2, ("Part One", "Section A")),
    ]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=24, overlap_tokens=4)  # the whole text needs two
    assert [c.text for c in chunks] == [blocks[0].text, "Part One\n\nSection A\n\nText of section A."]
    assert [c.heading_path for c in chunks] == [("Doc",), ("Part One",)]


def test_a_document_that_fits_stays_one_chunk_whatever_its_headings(tokenizer: tokenizers.Tokenizer) -> None:
    blocks = [
        Block("Intro", 1, ("Intro",), is_heading=True),
        Block("A short introduction with enough words to count as body text.", 1, ("Intro",)),
        Block("Methods", 1, ("Methods",), is_heading=True),
        Block("Short methods, also with enough words to count as body text.", 1, ("Methods",)),
    ]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=128, overlap_tokens=16)
    assert [c.text for c in chunks] == ["\n\n".join(b.text for b in blocks)]


def test_page_spans_follow_the_text(tokenizer: tokenizers.Tokenizer) -> None:
    """Every word names its page, so a chunk's span must be exactly the pages its words name."""
    blocks = [
        Block(" ".join(f"p{page}w{i}." if i % 7 == 6 else f"p{page}w{i}" for i in range(n)), page)
        for page, n in [(1, 30), (2, 5), (2, 80), (3, 3), (4, 150), (7, 20)]
    ]
    for max_tokens, overlap_tokens in [(24, 6), (64, 16), (254, 32)]:
        chunks = chunk_blocks(blocks, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
        assert_valid(tokenizer, blocks, chunks, max_tokens)
        for chunk in chunks:
            pages = [int(m) for m in re.findall(r"p(\d+)w", chunk.text)]
            assert (chunk.page_start, chunk.page_end) == (min(pages), max(pages)), chunk.text


def test_chunking_is_deterministic(tokenizer: tokenizers.Tokenizer) -> None:
    blocks = [*sectioned_document(), Block(ADVERSARIAL["mixed"], 9)]
    first = chunk_blocks(blocks, tokenizer, max_tokens=100, overlap_tokens=20)
    assert first == chunk_blocks(blocks, tokenizer, max_tokens=100, overlap_tokens=20)


# --- properties ------------------------------------------------------------------------------

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFXYZ0123456789.,;:!?'\"()-/_=&%$€éüßøÆ😀東京日本の首都です。！？"
WORDS = ["the", "Dr.", "e.g.", "U.S.", "3.14", "end.", "Why?", "Yes!", "naïve", "co-op", "東京です。"]


def words() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(WORDS),
        st.text(alphabet=ALPHABET, min_size=1, max_size=12),
        st.text(alphabet=ALPHABET, min_size=50, max_size=600),  # URL-like runs with no spaces
        st.text(alphabet="東京日本の首都です。！？", min_size=20, max_size=300),
    )


@st.composite
def documents(draw: st.DrawFn) -> list[Block]:
    blocks, page, path = [], 1, ()
    for i in range(draw(st.integers(1, 12))):
        page += draw(st.integers(0, 2))
        separators = st.sampled_from([" ", " ", " ", "\n", "  "])
        parts = draw(st.lists(st.tuples(words(), separators), max_size=60))
        text = "".join(word + sep for word, sep in parts)
        is_heading = draw(st.booleans()) and len(text) < 80
        if is_heading:
            path = (f"H{i}",)
        blocks.append(Block(text, page, path, is_heading))
    return blocks


budgets = st.integers(8, 96).flatmap(lambda m: st.tuples(st.just(m), st.integers(0, min(m - 1, 24))))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=documents(), budget=budgets)
def test_any_document_fits_and_is_covered(
    tokenizer: tokenizers.Tokenizer, blocks: list[Block], budget: tuple[int, int]
) -> None:
    max_tokens, overlap_tokens = budget
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    if not any(squeeze(b.text) for b in blocks):
        assert chunks == []
        return
    assert_valid(tokenizer, blocks, chunks, max_tokens)
    for block in blocks:  # words that fit a chunk are never cut (CJK runs may break between characters)
        for word in block.text.split():
            if not re.search("[東京日本の首都です。！？]", word) and count(tokenizer, word) <= max_tokens:
                assert any(word in c.text for c in chunks), word
    paths = {b.heading_path for b in blocks}
    assert all(c.heading_path in paths for c in chunks)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 120), min_size=1, max_size=8),
    ends=st.lists(st.sampled_from(["", "", "", ".", "!", "?"]), min_size=1),
    budget=budgets,
)
def test_overlap_is_bounded_and_starts_at_a_word(
    tokenizer: tokenizers.Tokenizer, sizes: list[int], ends: list[str], budget: tuple[int, int]
) -> None:
    max_tokens, overlap_tokens = budget
    counter = iter(range(10**6))
    blocks = [Block(" ".join(f"u{next(counter)}v{ends[i % len(ends)]}" for i in range(n)), page=1) for n in sizes]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert_valid(tokenizer, blocks, chunks, max_tokens)
    for previous, chunk in itertools.pairwise(chunks):
        repeated = overlap_text(previous.text, chunk.text)
        assert count(tokenizer, repeated) <= overlap_tokens
        assert repeated == "" or repeated.startswith("u")
        assert repeated in ("", chunk.text) or chunk.text[len(repeated)].isspace()


# --- a real book -----------------------------------------------------------------------------


def test_a_350_page_book(corpus_dir: Path, tokenizer: tokenizers.Tokenizer) -> None:
    """freeculture.pdf (~650k characters) chunks completely, every chunk within the budget."""
    import pymupdf

    path = corpus_dir / "pdf" / "pdfjs__test__pdfs__freeculture.pdf"
    if not path.exists():
        pytest.skip(f"{path.name} not in the corpus")
    with pymupdf.open(path) as pdf:
        pages = [page.get_text() for page in pdf]
    blocks = [
        Block(text, number)
        for number, page in enumerate(pages, 1)
        for text in re.split(r"\n\s*\n", page)
        if text.strip()
    ]
    chunks = chunk_blocks(blocks, tokenizer, max_tokens=254, overlap_tokens=32)
    assert_valid(tokenizer, blocks, chunks, 254)
    assert sum(c.token_count for c in chunks) / len(chunks) > 200  # packed, not fragmented
    assert chunks[-1].page_end == max(b.page for b in blocks)
