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


def _rest_of(parsed: ParsedDocument, settings: Settings, last: int, budget: int) -> list[tuple[int, int]]:
    """Page ranges still to parse after the first request (pages 1..`last`, `budget` OCR pages).

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
    scanned = budget + len(parsed.ocr_pending)  # pages of the first range that want OCR
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


@dataclass
class BatchOutcome:
    """What `parse_documents` did: one outcome per document it settled, and the transient error, if any,
    that sent others back to `queued` (or left them claimed under the task's token) for the task's retry."""

    outcomes: list[ParseOutcome]
    retry: Exception | None = None


def parse_document(
    document_id: int,
    *,
    sessions: sessionmaker[Session],
    parser: SandboxedParser,
    settings: Settings,
    tokenizer_for: Callable[[str, int], ChunkTokenizer] | None = None,
    token: str | None = None,
) -> ParseOutcome:
    """Claim, parse (sandboxed), chunk and store one document: `parse_documents` of one, raising its
    transient error (`TRANSIENT`) for the caller to retry once the document went back to `queued`."""
    done = parse_documents(
        [document_id], sessions=sessions, parser=parser, settings=settings, tokenizer_for=tokenizer_for, token=token
    )
    if done.retry is not None and not done.outcomes:
        raise done.retry
    return done.outcomes[0]


def parse_documents(
    document_ids: Sequence[int],
    *,
    sessions: sessionmaker[Session],
    parser: SandboxedParser,
    settings: Settings,
    tokenizer_for: Callable[[str, int], ChunkTokenizer] | None = None,
    token: str | None = None,
) -> BatchOutcome:
    """Claim, parse (sandboxed), chunk and store documents: one claim and one write transaction for all.

    Small documents share a task (`parse_batches`), so what a document costs besides its parse (claim,
    lease, a transaction, a COPY and the BM25 trigger's statement) is paid once per batch.

    A PDF longer than `parse.split_pages` (a scan: `ocr.split_pages`; an image: more frames than
    `ocr.split_pages`) is split: this call parses the first range and returns the other parts for
    separate tasks (see `parse_part`). Permanent errors fail their document with their message as
    the reason; a transient one (`TRANSIENT`) puts its document back to `queued` and is returned as
    `retry`, until the attempt limit (`RetryPolicy`) fails the document for good. `token` names the
    claim (the task id): a retry under the same token resumes its claims even when an error left
    them `parsing` (e.g. the database went away mid-save).
    """
    tokenizer_for = tokenizer_for or _tokenizer_for(settings)
    policy, lease_s = RetryPolicy.of(settings), settings.worker.lease_s
    with sessions.begin() as session:
        docs = store.claim_documents(
            session, document_ids, lease_s=lease_s, token=token, max_attempts=policy.max_attempts
        )
        claimed = {doc.id for doc in docs}
        others = [d for d in document_ids if d not in claimed]
        gave_up = (
            states.fail_exhausted(session, max_attempts=policy.max_attempts, document_ids=others, token=token)
            if others
            else {}
        )
    outcomes = [
        ParseOutcome(d, "failed", reason=gave_up[d]) if d in gave_up else ParseOutcome(d, "skipped") for d in others
    ]
    if not docs:
        return BatchOutcome(outcomes)
    results: list[store.ParsedChunks | ParseOutcome | Exception] = []
    with LeaseKeeper(sessions, [(doc.id, doc.attempts) for doc in docs], lease_s=lease_s):
        for doc in docs:
            try:
                results.append(_parse_and_chunk(doc, sessions=sessions, parser=parser, settings=settings,
                                                tokenizer_for=tokenizer_for, batched=len(docs) > 1))  # fmt: skip
            except (PermanentError, *TRANSIENT) as err:
                results.append(err)
        try:
            with sessions.begin() as session:
                outcomes += _store_results(session, docs, results, settings, policy)
        except TRANSIENT as err:  # nothing was written: every document goes back for the retry
            return BatchOutcome(outcomes + _give_back(sessions, docs, err, policy), retry=err)
    retry = next((r for r in results if isinstance(r, TRANSIENT)), None)
    return BatchOutcome(outcomes, retry=retry)


def _parse_and_chunk(
    doc: store.ClaimedDocument,
    *,
    sessions: sessionmaker[Session],
    parser: SandboxedParser,
    settings: Settings,
    tokenizer_for: Callable[[str, int], ChunkTokenizer],
    batched: bool = False,
) -> store.ParsedChunks | ParseOutcome:
    """The document's chunks to store, or the outcome of splitting it into page ranges (stored here).

    In a batch (`batched`) a PDF OCRs nothing: its pages that want OCR become parts of their own, so
    a batch stays a few milliseconds per document and the seconds of OCR spread over free processes."""
    split = settings.parse.split_pages
    kind = normalize_media_type(doc.media_type)
    ocr_on = settings.ocr.mode != "off"
    if kind in IMAGES and split > 0 and ocr_on:  # every frame is OCR'd: ranges of ocr.split_pages frames
        split = settings.ocr.split_pages
    splittable = split > 0 and (kind == PDF or (kind in IMAGES and ocr_on))
    budget = 0 if batched else settings.ocr.split_pages  # pages the first request may OCR
    if splittable:  # the child keeps the bytes for the ranges this process parses next
        parsed = parser.parse(
            StoredBytes(doc.content_key, lambda: doc.content),
            with_page_range(kind, 1, split),
            ocr_budget=budget if ocr_on else None,
        )
    else:
        parsed = parser.parse(doc.content, doc.media_type)
    ranges = _rest_of(parsed, settings, split, budget) if splittable else []
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
    return store.ParsedChunks(doc, chunks, parsed.page_count, parsed.title, "; ".join(parsed.warnings))


def _store_results(
    session: Session,
    docs: Sequence[store.ClaimedDocument],
    results: Sequence[store.ParsedChunks | ParseOutcome | Exception],
    settings: Settings,
    policy: RetryPolicy,
) -> list[ParseOutcome]:
    """In one transaction: store the chunked documents, fail those with a permanent error or too many
    chunks (`parse.max_chunks`), and give back those with a transient one."""
    states.lock_keys(session, [doc.id for doc in docs])  # every key first: no lock order to get wrong below
    outcomes: list[ParseOutcome] = []
    to_save: list[store.ParsedChunks] = []
    transient: list[tuple[store.ClaimedDocument, Exception]] = []
    max_chunks = settings.parse.max_chunks
    for doc, result in zip(docs, results, strict=True):
        if isinstance(result, ParseOutcome):
            outcomes.append(result)
        elif isinstance(result, TRANSIENT):
            transient.append((doc, result))
        elif isinstance(result, Exception):
            store.fail_document(session, doc, str(result))
            outcomes.append(ParseOutcome(doc.id, "failed", reason=str(result)))
        elif len(result.chunks) > max_chunks:
            reason = (
                f"document produced {len(result.chunks)} chunks, more than the limit of {max_chunks} (parse.max_chunks)"
            )
            store.fail_document(session, doc, reason)
            outcomes.append(ParseOutcome(doc.id, "failed", reason=reason))
        else:
            to_save.append(result)
    saved = store.save_parsed(session, to_save) if to_save else {}
    for p in to_save:
        if (state := saved[p.doc.id]) is None:
            outcomes.append(ParseOutcome(p.doc.id, "skipped", reason="claim lost to a newer attempt"))
        else:
            models = [m for m in (p.doc.model, p.doc.next_model) if m] if p.chunks else []
            outcomes.append(ParseOutcome(p.doc.id, state, models=models, chunks=len(p.chunks)))
    for doc, err in transient:
        outcomes += _release_or_fail(session, doc, _reason_of(err), policy)
    return outcomes


def _reason_of(err: Exception) -> str:
    if isinstance(err, RetryableError):
        return str(err)
    return f"{type(err).__name__}: {getattr(err, 'orig', None) or err}"


def _release_or_fail(
    session: Session, doc: store.ClaimedDocument, reason: str, policy: RetryPolicy
) -> list[ParseOutcome]:
    """Fail the document when this was its last attempt (its outcome); else put it back to `queued` (none)."""
    if policy.exhausted(doc.attempts):
        reason = policy.gave_up(doc.attempts, reason)
        store.fail_document(session, doc, reason)
        return [ParseOutcome(doc.id, "failed", reason=reason)]
    store.release_for_retry(session, doc, reason)
    return []


def _give_back(
    sessions: sessionmaker[Session], docs: Sequence[store.ClaimedDocument], err: Exception, policy: RetryPolicy
) -> list[ParseOutcome]:
    """`_release_or_fail` for each document after `err` stopped their write. When the database refuses
    this too, they stay `parsing` under this claim: the task's retry resumes them (same token), or the
    sweeper once the leases run out."""
    try:
        with sessions.begin() as session:
            states.lock_keys(session, [doc.id for doc in docs])
            return [out for doc in docs for out in _release_or_fail(session, doc, _reason_of(err), policy)]
    except (SQLAlchemyError, psycopg.Error) as also:
        log.warning("documents %s: could not record %r: %s", [doc.id for doc in docs], _reason_of(err)[:200], also)
        return []


def _after_join_failed(
    sessions: sessionmaker[Session], doc: store.ClaimedDocument, err: Exception, policy: RetryPolicy
) -> ParseOutcome:
    """Fail a split document whose join (chunking all its parts) failed on its last attempt; else re-raise
    `err`, the document staying `parsing` (its parts would go) for the task's retry to resume."""
    reason = _reason_of(err)
    if policy.exhausted(doc.attempts):
        try:
            with sessions.begin() as session:
                reason = policy.gave_up(doc.attempts, reason)
                store.fail_document(session, doc, reason)
                return ParseOutcome(doc.id, "failed", reason=reason)
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
    with LeaseKeeper(sessions, [(doc.id, doc.attempts)], lease_s=lease_s):
        try:
            with sessions.begin() as session:
                blocks = store.part_blocks(session, doc.id)
            chunker = chunker_of(doc, settings)
            tok = (tokenizer_for or _tokenizer_for(settings))(doc.model, chunker.max_tokens)
            chunks = chunk_document(blocks, tok, overlap_tokens=chunker.overlap_tokens, title=parsed.title)
            joined = store.ParsedChunks(doc, chunks, parsed.page_count, parsed.title, "; ".join(parsed.warnings))
            with sessions.begin() as session:
                return _store_results(session, [doc], [joined], settings, policy)[0]
        except TRANSIENT as err:
            if token is None:  # nobody can resume: leave the document to the sweeper (lease)
                raise
            return _after_join_failed(sessions, doc, err, policy)


def _resume_join(
    session: Session, document_id: int, part: int, attempt: int, token: str, lease_s: int, policy: RetryPolicy
) -> store.PartToParse | ParseOutcome | None:
    """The part's range again under a new attempt, when this task (`token`) was joining the document."""
    row = states.resume_join(
        session, document_id, part, attempt, token=token, lease_s=lease_s, max_attempts=policy.max_attempts
    )
    if row is None:
        if gave_up := states.fail_exhausted(
            session, max_attempts=policy.max_attempts, document_ids=[document_id], token=token
        ):
            return ParseOutcome(document_id, "failed", reason=gave_up[document_id])
        return None
    claim = store.load_claim(session, document_id, row.attempts)
    return store.PartToParse(claim, row.page_start, row.page_end) if claim else None


def _stored_content(sessions: sessionmaker[Session], document_id: int) -> bytes:
    with sessions.begin() as session:
        return store.document_content(session, document_id)
