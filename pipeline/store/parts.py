"""Long PDFs parsed as page ranges by parallel tasks, joined before chunking.

A range that stops at its OCR budget hands the rest of its pages to new parts (`split_part`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from docpipe.store.documents import ClaimedDocument, still_claimed
from docpipe.types import Block

__all__ = [
    "PartToParse",
    "finish_part",
    "load_claim",
    "parsed_chars",
    "part_blocks",
    "part_to_parse",
    "renew_lease",
    "split_into_parts",
    "split_part",
]


def _blocks_json(blocks: Sequence[Block]) -> list[list]:
    return [[b.text, b.page, list(b.heading_path), b.is_heading, b.ocr_confidence] for b in blocks]


def _chars(blocks: Sequence[Block]) -> int:
    return sum(len(b.text) for b in blocks)


def split_into_parts(
    session: Session,
    doc: ClaimedDocument,
    first: Sequence[Block],
    ranges: Sequence[tuple[int, int]],
    *,
    page_count: int,
    lease_s: int,
) -> bool:
    """Record a claimed document's page ranges; part 0 (already parsed) keeps `first`. False: claim lost."""
    if not still_claimed(session, doc):
        return False
    session.execute(text("DELETE FROM document_parts WHERE document_id = :d"), {"d": doc.id})
    insert = text(
        "INSERT INTO document_parts (document_id, part, attempt, page_start, page_end, blocks, chars) "
        "VALUES (:d, :p, :a, :s, :e, :b, :c)"
    ).bindparams(bindparam("b", type_=JSONB(none_as_null=True)))
    session.execute(
        insert,
        {"d": doc.id, "p": 0, "a": doc.attempts, "s": 1, "e": ranges[0][0] - 1, "b": _blocks_json(first),
         "c": _chars(first)},
    )  # fmt: skip
    for part, (start, end) in enumerate(ranges, start=1):
        session.execute(insert, {"d": doc.id, "p": part, "a": doc.attempts, "s": start, "e": end, "b": None, "c": None})
    renew_lease(session, doc.id, lease_s, page_count=page_count)
    return True


def split_part(session: Session, claim: ClaimedDocument, part: int, rest: Sequence[tuple[int, int]]) -> list[int]:
    """Cut a part short before `rest[0][0]` and add `rest` (page ranges) as new parts; their numbers.

    Call in the transaction that then finishes the part (`finish_part`): the new parts are missing
    before it counts, so exactly one finisher still sees none missing. [] when the claim is lost.
    """
    if not rest or not still_claimed(session, claim):  # the row lock serialises the finishers
        return []
    session.execute(
        text("UPDATE document_parts SET page_end = :e WHERE document_id = :d AND part = :p"),
        {"d": claim.id, "p": part, "e": rest[0][0] - 1},
    )
    top = session.execute(
        text("SELECT max(part) FROM document_parts WHERE document_id = :d"), {"d": claim.id}
    ).scalar_one()
    numbers = list(range(top + 1, top + 1 + len(rest)))
    session.execute(
        text(
            "INSERT INTO document_parts (document_id, part, attempt, page_start, page_end) VALUES (:d, :p, :a, :s, :e)"
        ),
        [
            {"d": claim.id, "p": number, "a": claim.attempts, "s": start, "e": end}
            for number, (start, end) in zip(numbers, rest, strict=True)
        ],
    )
    return numbers


def renew_lease(session: Session, document_id: int, lease_s: int, *, page_count: int | None = None) -> None:
    session.execute(
        text(
            "UPDATE documents SET lease_until = now() + make_interval(secs => :l), updated_at = now(), "
            "page_count = coalesce(:p, page_count) WHERE id = :d"
        ),
        {"d": document_id, "l": lease_s, "p": page_count},
    )


@dataclass(frozen=True)
class PartToParse:
    claim: ClaimedDocument
    page_start: int
    page_end: int


def load_claim(session: Session, document_id: int, attempt: int) -> ClaimedDocument | None:
    """The claim `attempt` on a document still being parsed, as `claim_for_parse` returned it but without
    its bytes (`document_content` reads them when the parse sandbox does not hold them)."""
    row = session.execute(
        text(
            "SELECT d.id, d.collection_id, d.source, d.media_type, d.sha256, d.attempts, c.model_id, m.name, "
            "  c.chunking, (SELECT name FROM embedding_models WHERE id = c.next_model_id) AS next_model "
            "FROM documents d JOIN collections c ON c.id = d.collection_id "
            "JOIN embedding_models m ON m.id = c.model_id "
            "WHERE d.id = :d AND d.state = 'parsing' AND d.attempts = :a"
        ),
        {"d": document_id, "a": attempt},
    ).first()
    if row is None:
        return None
    return ClaimedDocument(
        row.id, row.collection_id, row.source, row.media_type, b"", row.attempts, row.model_id,
        row.name, row.chunking, row.next_model, bytes(row.sha256),
    )  # fmt: skip


def part_to_parse(session: Session, document_id: int, part: int, attempt: int) -> PartToParse | None:
    """A part still to parse under claim `attempt` (its bytes not loaded); None when done, superseded or gone."""
    pages = session.execute(
        text(
            "SELECT page_start, page_end FROM document_parts "
            "WHERE document_id = :d AND part = :p AND attempt = :a AND blocks IS NULL"
        ),
        {"d": document_id, "p": part, "a": attempt},
    ).first()
    claim = load_claim(session, document_id, attempt) if pages else None
    return PartToParse(claim, pages.page_start, pages.page_end) if claim else None


def finish_part(session: Session, claim: ClaimedDocument, part: int, blocks: Sequence[Block], *, lease_s: int) -> bool:
    """Store a part's blocks; True when this was the last part missing (the caller then chunks)."""
    if not still_claimed(session, claim):  # also serialises the parts' finishers on the document row
        return False
    session.execute(
        text("UPDATE document_parts SET blocks = :b, chars = :c WHERE document_id = :d AND part = :p").bindparams(
            bindparam("b", type_=JSONB)
        ),
        {"d": claim.id, "p": part, "b": _blocks_json(blocks), "c": _chars(blocks)},
    )
    renew_lease(session, claim.id, lease_s)
    missing = session.execute(
        text("SELECT count(*) FROM document_parts WHERE document_id = :d AND blocks IS NULL"), {"d": claim.id}
    ).scalar_one()
    return missing == 0


def parsed_chars(session: Session, claim: ClaimedDocument) -> int | None:
    """Characters of text in the parts parsed so far; None when the claim is lost. Locks the document
    row (like `finish_part`), so finishers counting against a limit see each other's parts."""
    if not still_claimed(session, claim):
        return None
    return int(
        session.execute(
            text("SELECT coalesce(sum(chars), 0) FROM document_parts WHERE document_id = :d"), {"d": claim.id}
        ).scalar_one()
    )


def part_blocks(session: Session, document_id: int) -> list[Block]:
    """Every part's blocks, in page order (parts added by `split_part` come after in number, not in pages)."""
    rows = session.execute(
        text("SELECT blocks FROM document_parts WHERE document_id = :d ORDER BY page_start"), {"d": document_id}
    ).scalars()
    return [
        Block(t, p, tuple(h), bool(is_h), *ocr)  # ocr: [confidence]; absent in parts stored before OCR
        for blocks in rows
        for t, p, h, is_h, *ocr in blocks
    ]
