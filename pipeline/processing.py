"""The pipeline's stage functions: parse+chunk one document, embed pending chunks.

Each takes its collaborators (session factory, parser, embedder) as keyword
arguments and owns its transactions: a short one to claim, none while the
parser or the model runs, a short one to write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from docpipe import states, store
from docpipe.chunk import ChunkTokenizer, chunk_document, chunk_tokenizer
from docpipe.config import Settings, TokenChunker
from docpipe.errors import PermanentError, RetryableError
from docpipe.lease import LeaseKeeper
from docpipe.parse import IMAGES, PDF, SandboxedParser, StoredBytes, normalize_media_type, with_page_range
from docpipe.retry import RetryPolicy
from docpipe.types import ParsedDocument

log = logging.getLogger(__name__)
DATABASE_LOST = (OperationalError, psycopg.OperationalError)  # psycopg's own: a COPY on the raw connection
TRANSIENT = (RetryableError, *DATABASE_LOST, ConnectionError)  # retried (until the attempts run out)


@dataclass
class ParseOutcome:
    document_id: int
    state: str  # new state; "split" when page ranges were handed out; "skipped" when not ours
    models: list[str] = field(default_factory=list)  # models its chunks were queued for: the embedders to wake
    chunks: int = 0
    reason: str | None = None
    attempt: int = 0
    parts: list[int] = field(default_factory=list)  # page-range parts to enqueue, when split


def _tokenizer_for(settings: Settings) -> Callable[[str, int], ChunkTokenizer]:
    return lambda model, max_tokens: chunk_tokenizer(model, settings.model_cache_dir, max_tokens)


def chunker_of(doc: store.ClaimedDocument, settings: Settings) -> TokenChunker:
    """The collection's recorded chunker settings; this worker's own only for collections that predate them."""
    return TokenChunker.model_validate(doc.chunking) if doc.chunking else settings.chunk


def _save(
    sessions: sessionmaker[Session],
    doc: store.ClaimedDocument,
    chunks: list,
    parsed: ParsedDocument,
    *,
    max_chunks: int,
) -> ParseOutcome:
    """Store the chunks, or fail the document when there are more than `max_chunks` (parse.max_chunks)."""
    if len(chunks) > max_chunks:
        reason = f"document produced {len(chunks)} chunks, more than the limit of {max_chunks} (parse.max_chunks)"
        with sessions.begin() as session:
            store.fail_document(session, doc, reason)
        return ParseOutcome(doc.id, "failed", reason=reason)
    with sessions.begin() as session:
        state = store.save_chunks(
            session, doc, chunks, page_count=parsed.page_count, title=parsed.title,
            why_no_text="; ".join(parsed.warnings),
        )  # fmt: skip
    if state is None:
        return ParseOutcome(doc.id, "skipped", reason="claim lost to a newer attempt")
    models = [m for m in (doc.model, doc.next_model) if m] if chunks else []
    return ParseOutcome(doc.id, state, models=models, chunks=len(chunks))


def page_ranges(page_count: int, size: int, first: int | None = None) -> list[tuple[int, int]]:
    """1-based inclusive ranges of `size` pages covering pages `first` (default size+1)..page_count."""
    first = size + 1 if first is None else first
    return [(start, min(start + size - 1, page_count)) for start in range(first, page_count + 1, size)]


def plan_ranges(
    start: int, end: int, ocr_pages: Sequence[int], *, max_pages: int, max_ocr: int
) -> list[tuple[int, int]]:
    """1-based inclusive ranges covering pages `start`..`end`, each of at most `max_pages` pages
    (<= 0: no limit) and at most `max_ocr` of `ocr_pages` (a request's OCR budget); never empty."""
    wanted = set(ocr_pages)
    ranges: list[tuple[int, int]] = []
    begin, ocr_in = start, 0
    for page in range(start, end + 1):
        if page > begin and (page - begin == max_pages or (page in wanted and ocr_in >= max_ocr)):
            ranges.append((begin, page - 1))
            begin, ocr_in = page, 0
        ocr_in += page in wanted
    return [*ranges, (begin, end)] if begin <= end else ranges


def _rest_of(parsed: ParsedDocument, settings: Settings, last: int) -> list[tuple[int, int]]:
    """Page ranges still to parse after the first request (pages 1..`last`).

    When the OCR budget stopped it, the rest of its range is planned from the pages that want OCR
    (`plan_ranges`); the pages after `last` go in ranges of `ocr.split_pages` when at least half of
    the first range wants OCR (a scan; images: every frame), else of `parse.split_pages` (a range
    that meets scans re-splits itself, see `parse_part`)."""
    if parsed.parsed_to is None:
        return page_ranges(parsed.page_count, settings.parse.split_pages, first=last + 1)
    last = min(last, parsed.page_count)
    within = plan_ranges(
        parsed.parsed_to + 1, last, parsed.ocr_pending,
        max_pages=settings.parse.split_pages, max_ocr=settings.ocr.split_pages,
    )  # fmt: skip
    scanned = settings.ocr.split_pages + len(parsed.ocr_pending)  # pages of the first range that want OCR
    size = settings.ocr.split_pages if 2 * scanned >= last else settings.parse.split_pages
    return within + page_ranges(parsed.page_count, size, first=last + 1)


def _rest_of_part(parsed: ParsedDocument, end: int, settings: Settings) -> list[tuple[int, int]]:
    """What a part (pages ..`end`) left when its OCR budget stopped it, planned like `_rest_of`."""
    if parsed.parsed_to is None or parsed.parsed_to >= end:  # all of it (an image range ends at `end`)
        return []
    return plan_ranges(
        parsed.parsed_to + 1, end, parsed.ocr_pending,
        max_pages=settings.parse.split_pages, max_ocr=settings.ocr.split_pages,
    )  # fmt: skip


def parse_document(
    document_id: int,
    *,
    sessions: sessionmaker[Session],
    parser: SandboxedParser,
    settings: Settings,
    tokenizer_for: Callable[[str, int], ChunkTokenizer] | None = None,
    token: str | None = None,
) -> ParseOutcome:
    """Claim, parse (sandboxed), chunk and store one document.

    A PDF longer than `parse.split_pages` (a scan: `ocr.split_pages`; an image: more frames than
    `ocr.split_pages`) is split: this call parses the first
    range and returns the other parts for separate tasks (see `parse_part`).
    Permanent errors fail the document with their message as the reason;
    transient ones (`TRANSIENT`) put it back to `queued` and propagate, until
    the attempt limit (`RetryPolicy`) fails it for good. `token` names the
    claim (the task id): a retry under the same token resumes the claim even
    when the error left it `parsing` (e.g. the database went away mid-save).
    """
    tokenizer_for = tokenizer_for or _tokenizer_for(settings)
    policy, lease_s = RetryPolicy.of(settings), settings.worker.lease_s
    with sessions.begin() as session:
        doc = store.claim_for_parse(
            session, document_id, lease_s=lease_s, token=token, max_attempts=policy.max_attempts
        )
        if doc is None:
            if gave_up := states.fail_exhausted(
                session, max_attempts=policy.max_attempts, document_id=document_id, token=token
            ):
                return ParseOutcome(document_id, "failed", reason=gave_up[document_id])
            return ParseOutcome(document_id, "skipped")
    with LeaseKeeper(sessions, doc.id, doc.attempts, lease_s=lease_s):
        return _parse_claimed(doc, sessions=sessions, parser=parser, settings=settings, tokenizer_for=tokenizer_for)


def _parse_claimed(
    doc: store.ClaimedDocument,
    *,
    sessions: sessionmaker[Session],
    parser: SandboxedParser,
    settings: Settings,
    tokenizer_for: Callable[[str, int], ChunkTokenizer],
) -> ParseOutcome:
    split = settings.parse.split_pages
    kind = normalize_media_type(doc.media_type)
    ocr_on = settings.ocr.mode != "off"
    if kind in IMAGES and split > 0 and ocr_on:  # every frame is OCR'd: ranges of ocr.split_pages frames
        split = settings.ocr.split_pages
    splittable = split > 0 and (kind == PDF or (kind in IMAGES and ocr_on))
    budget = settings.ocr.split_pages if splittable and ocr_on else None
    try:
        if splittable:  # the child keeps the bytes for the ranges this process parses next
            parsed = parser.parse(
                StoredBytes(doc.content_key, lambda: doc.content), with_page_range(kind, 1, split), ocr_budget=budget
            )
        else:
            parsed = parser.parse(doc.content, doc.media_type)
        ranges = _rest_of(parsed, settings, split) if splittable else []
        if ranges:
            with sessions.begin() as session:
                kept = store.split_into_parts(session, doc, parsed.blocks, ranges, page_count=parsed.page_count,
                                              lease_s=settings.worker.lease_s)  # fmt: skip
            if not kept:
                return ParseOutcome(doc.id, "skipped", reason="claim lost to a newer attempt")
            return ParseOutcome(doc.id, "split", attempt=doc.attempts, parts=list(range(1, len(ranges) + 1)))
        chunker = chunker_of(doc, settings)
        tok = tokenizer_for(doc.model, chunker.max_tokens)
        chunks = chunk_document(parsed.blocks, tok, overlap_tokens=chunker.overlap_tokens, title=parsed.title)
        return _save(sessions, doc, chunks, parsed, max_chunks=settings.parse.max_chunks)
    except PermanentError as err:
        with sessions.begin() as session:
            store.fail_document(session, doc, str(err))
        return ParseOutcome(doc.id, "failed", reason=str(err))
    except TRANSIENT as err:
        return _after_transient(sessions, doc, err, RetryPolicy.of(settings))


def _after_transient(
    sessions: sessionmaker[Session],
    doc: store.ClaimedDocument,
    err: Exception,
    policy: RetryPolicy,
    *,
    release: bool = True,
) -> ParseOutcome:
    """Fail the document when this was its last attempt; else put it back to `queued` and re-raise `err`.

    With `release` False (a split document's join: its parts would go) the document stays `parsing`
    for the task's retry to resume. When the database refuses the write, the document also stays
    `parsing` under this claim: the task's retry resumes it (same token), or the sweeper once the
    lease runs out.
    """
    reason = (
        f"{type(err).__name__}: {getattr(err, 'orig', None) or err}"
        if not isinstance(err, RetryableError)
        else str(err)
    )
    try:
        with sessions.begin() as session:
            if policy.exhausted(doc.attempts):
                reason = policy.gave_up(doc.attempts, reason)
                store.fail_document(session, doc, reason)
                return ParseOutcome(doc.id, "failed", reason=reason)
            if release:
                store.release_for_retry(session, doc, reason)
    except (SQLAlchemyError, psycopg.Error) as also:  # the retry (or the sweeper) takes it from here
        log.warning("document %d: could not record %r: %s", doc.id, reason[:200], also)
    raise err


def parse_part(
    document_id: int,
    part: int,
    attempt: int,
    *,
    sessions: sessionmaker[Session],
    parser: SandboxedParser,
    settings: Settings,
    tokenizer_for: Callable[[str, int], ChunkTokenizer] | None = None,
    token: str | None = None,
) -> ParseOutcome:
    """Parse one page range of a split PDF; the last part to finish chunks the whole document.

    The range stops at its OCR budget (`ocr.split_pages` pages) like the first request; what it
    left becomes new parts, returned for separate tasks.

    Chunking sees every page at once, so chunks (and their overlap) are the
    same as if one task had parsed the document. A retryable error propagates
    for the task to retry; the document's lease (renewed by every finished
    part) lets the sweeper start over if a part is lost for good. The part
    that finishes last holds the claim under `token` while it chunks: its
    retry takes the claim back (a new attempt) and parses its range again
    for the title and warnings, then chunks.
    """
    policy, lease_s = RetryPolicy.of(settings), settings.worker.lease_s
    with sessions.begin() as session:
        work = store.part_to_parse(session, document_id, part, attempt)
        resumed = work is None and token is not None
        if resumed:
            work = _resume_join(session, document_id, part, attempt, token, lease_s, policy)
            if isinstance(work, ParseOutcome):
                return work
    if work is None:
        return ParseOutcome(document_id, "skipped")
    doc = work.claim
    try:
        parsed = parser.parse(
            StoredBytes(doc.content_key, lambda: _stored_content(sessions, doc.id)),  # read when not held
            with_page_range(doc.media_type, work.page_start, work.page_end),
            # resumed: its range was cut to its budget when first parsed; reading all of it drops no page
            ocr_budget=None if resumed or settings.ocr.mode == "off" else settings.ocr.split_pages,
        )
    except PermanentError as err:
        with sessions.begin() as session:
            store.fail_document(session, doc, f"pages {work.page_start}-{work.page_end}: {err}")
        return ParseOutcome(doc.id, "failed", reason=str(err))
    rest = [] if resumed else _rest_of_part(parsed, work.page_end, settings)  # resumed: its rest was split
    with sessions.begin() as session:
        so_far = store.parsed_chars(session, doc)  # the document's total is bounded, not each range's
        produced = (so_far or 0) + sum(len(block.text) for block in parsed.blocks)
        if so_far is not None and produced > settings.parse.max_chars:
            reason = (
                f"document produced {produced} characters of text by page {work.page_end}, more than the limit "
                f"of {settings.parse.max_chars} (parse.max_chars)"
            )
            store.fail_document(session, doc, reason)
            return ParseOutcome(doc.id, "failed", reason=reason)
        new_parts = store.split_part(session, doc, part, rest) if rest else []  # before finish_part: not last
        last = store.finish_part(session, doc, part, parsed.blocks, lease_s=settings.worker.lease_s)
        if last:
            states.hand_claim(session, doc.id, doc.attempts, token)
    if not last:
        return ParseOutcome(doc.id, "parsing", attempt=doc.attempts, parts=new_parts)
    with LeaseKeeper(sessions, doc.id, doc.attempts, lease_s=lease_s):
        try:
            with sessions.begin() as session:
                blocks = store.part_blocks(session, doc.id)
            chunker = chunker_of(doc, settings)
            tok = (tokenizer_for or _tokenizer_for(settings))(doc.model, chunker.max_tokens)
            chunks = chunk_document(blocks, tok, overlap_tokens=chunker.overlap_tokens, title=parsed.title)
            parsed = ParsedDocument(blocks, parsed.page_count, parsed.title, warnings=parsed.warnings)
            return _save(sessions, doc, chunks, parsed, max_chunks=settings.parse.max_chunks)
        except TRANSIENT as err:
            if token is None:  # nobody can resume: leave the document to the sweeper (lease)
                raise
            return _after_transient(sessions, doc, err, policy, release=False)


def _resume_join(
    session: Session, document_id: int, part: int, attempt: int, token: str, lease_s: int, policy: RetryPolicy
) -> store.PartToParse | ParseOutcome | None:
    """The part's range again under a new attempt, when this task (`token`) was joining the document."""
    row = states.resume_join(
        session, document_id, part, attempt, token=token, lease_s=lease_s, max_attempts=policy.max_attempts
    )
    if row is None:
        if gave_up := states.fail_exhausted(
            session, max_attempts=policy.max_attempts, document_id=document_id, token=token
        ):
            return ParseOutcome(document_id, "failed", reason=gave_up[document_id])
        return None
    claim = store.load_claim(session, document_id, row.attempts)
    return store.PartToParse(claim, row.page_start, row.page_end) if claim else None


def _stored_content(sessions: sessionmaker[Session], document_id: int) -> bytes:
    with sessions.begin() as session:
        return store.document_content(session, document_id)
