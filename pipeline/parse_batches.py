"""Which documents share a parse task: small ones go in batches, so that what a task costs besides the
parse itself (a message, a claim, a lease, a transaction, a COPY) is paid once per batch."""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil

from sqlalchemy.orm import Session

from docpipe import store
from docpipe.config import ParseLimits
from docpipe.parse.media import IMAGES, normalize_media_type

__all__ = ["SPREAD", "group_for_parse", "parse_groups"]

SPREAD = 8  # a batch holds at most 1/SPREAD of an enqueue's small documents: a small ingest still fans out


def group_for_parse(docs: Sequence[tuple[int, int, str]], limits: ParseLimits) -> list[list[int]]:
    """Parse tasks for (document id, size in bytes, media type) `docs`, as lists of ids.

    Documents of at most `parse.batch_max_bytes` go in batches of up to `parse.batch_documents`, in
    input order; images (each page is OCR'd) and larger documents get a task each, and come first:
    the longest work starts first.
    """
    small, alone = [], []
    for doc_id, size, media_type in docs:
        batched = size <= limits.batch_max_bytes and normalize_media_type(media_type) not in IMAGES
        (small if batched else alone).append(doc_id)
    per_task = max(1, min(limits.batch_documents, ceil(len(small) / SPREAD)))
    return [[doc_id] for doc_id in alone] + [small[i : i + per_task] for i in range(0, len(small), per_task)]


def parse_groups(session: Session, document_ids: Sequence[int], limits: ParseLimits) -> list[list[int]]:
    """`group_for_parse` of these stored documents."""
    return group_for_parse(store.parse_sizes(session, document_ids), limits)
