"""The pipeline's stage functions: parse+chunk one document, embed pending chunks.

Each takes its collaborators (session factory, parser, embedder) as keyword
arguments and owns its transactions: a short one to claim, none while the
parser or the model runs, a short one to write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from docpipe import store
from docpipe.chunk import chunk_blocks
from docpipe.config import Settings
from docpipe.errors import PermanentError, RetryableError
from docpipe.parse import SandboxedParser

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkTokenizer:
    """The embedding model's tokenizer and the content budget of one chunk (tokens)."""

    tokenizer: object  # tokenizers.Tokenizer
    max_tokens: int


@lru_cache(maxsize=8)
def chunk_tokenizer(model: str, cache_dir: Path, max_tokens: int) -> ChunkTokenizer:
    """Load only the tokenizer of `model` (no weights); cap chunks at its max sequence length."""
    from docpipe.embed.base import load_fast_tokenizer
    from docpipe.embed.st_config import read_st_config, resolve_model_dir

    st_config = read_st_config(resolve_model_dir(model, cache_dir=cache_dir))
    tok, _pad_id = load_fast_tokenizer(st_config)
    special = len(tok.encode("", add_special_tokens=True).ids)
    return ChunkTokenizer(tok, max(8, min(max_tokens, st_config.max_tokens - special)))


@dataclass
class ParseOutcome:
    document_id: int
    state: str  # new state, or "skipped" when the document was not ours to parse
    model: str | None = None
    chunks: int = 0
    reason: str | None = None


def parse_document(
    document_id: int,
    *,
    sessions: sessionmaker[Session],
    parser: SandboxedParser,
    settings: Settings,
    tokenizer_for: Callable[[str], ChunkTokenizer] | None = None,
) -> ParseOutcome:
    """Claim, parse (sandboxed), chunk and store one document.

    Permanent errors fail the document with their message as the reason;
    retryable ones put it back to `queued` and propagate, until the attempt
    limit fails it for good.
    """
    tokenizer_for = tokenizer_for or (lambda m: chunk_tokenizer(m, settings.model_cache_dir, settings.chunk.max_tokens))
    with sessions.begin() as session:
        doc = store.claim_for_parse(session, document_id, lease_s=settings.worker.lease_s)
    if doc is None:
        return ParseOutcome(document_id, "skipped")
    try:
        parsed = parser.parse(doc.content, doc.media_type)
        tok = tokenizer_for(doc.model)
        chunks = chunk_blocks(
            parsed.blocks,
            tok.tokenizer,
            max_tokens=tok.max_tokens,
            overlap_tokens=min(settings.chunk.overlap_tokens, tok.max_tokens // 2),
        )
    except PermanentError as err:
        with sessions.begin() as session:
            store.fail_document(session, doc, str(err))
        return ParseOutcome(doc.id, "failed", reason=str(err))
    except RetryableError as err:
        with sessions.begin() as session:
            if doc.attempts >= settings.worker.max_attempts:
                store.fail_document(session, doc, f"{err} (after {doc.attempts} attempts)")
                return ParseOutcome(doc.id, "failed", reason=str(err))
            store.release_for_retry(session, doc, str(err))
        raise
    with sessions.begin() as session:
        state = store.save_chunks(session, doc, chunks, page_count=parsed.page_count)
    if state is None:
        return ParseOutcome(doc.id, "skipped", reason="claim lost to a newer attempt")
    return ParseOutcome(doc.id, state, model=doc.model, chunks=len(chunks))
