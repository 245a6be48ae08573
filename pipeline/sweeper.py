"""Finding work that a dead worker or a lost message left behind.

The sweeper never does the work itself and never creates rows: it only names
documents and models whose work should be enqueued again. Re-enqueueing is
harmless because every claim is conditional (see `store`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from docpipe import states, store
from docpipe.config import Settings
from docpipe.retry import RetryPolicy


@dataclass
class StaleWork:
    parse: list[int] = field(default_factory=list)  # document ids to enqueue for parsing
    embed_models: list[str] = field(default_factory=list)  # models with claimable pending chunks
    failed: int = 0  # documents failed for running out of attempts (parse claims and embed claims)
    switched: list[str] = field(default_factory=list)  # collections moved to their reindexed model


def find_stale_work(
    *, sessions: sessionmaker[Session], settings: Settings, parse_backlog: int = 0, limit: int = 10_000
) -> StaleWork:
    """Fail documents out of attempts; name documents and models to enqueue again.

    Queued documents, and split PDFs whose parts are late, count as lost only
    while the parse queue is empty (`parse_backlog` messages waiting): a long
    backlog is not a lost message.
    """
    out = StaleWork()
    max_attempts = RetryPolicy.of(settings).max_attempts
    with sessions.begin() as session:  # chunks whose claims ran out: drains died on them
        out.failed = len(states.fail_embed_exhausted(session, max_attempts=max_attempts, limit=limit))
    with sessions.begin() as session:  # the same rule and reason as a worker's last attempt (RetryPolicy)
        out.failed += len(states.fail_exhausted(session, max_attempts=max_attempts))
        out.parse = list(
            session.execute(
                text(
                    "UPDATE documents SET updated_at = now() WHERE id IN ("
                    "  SELECT id FROM documents WHERE "
                    "  (state = :queued AND :idle AND updated_at < now() - make_interval(secs => :grace)) "
                    "  OR (state = :parsing AND lease_until < now() AND (:idle OR NOT EXISTS ("
                    "      SELECT 1 FROM document_parts p WHERE p.document_id = documents.id))) "
                    "  ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED) RETURNING id"
                ),
                {
                    "grace": settings.worker.requeue_after_s,
                    "limit": limit,
                    "idle": parse_backlog == 0,
                    "queued": states.DocState.QUEUED,
                    "parsing": states.DocState.PARSING,
                },
            ).scalars()
        )
        out.embed_models = list(
            session.execute(
                text(
                    "SELECT m.name FROM embedding_models m WHERE m.index_deferred OR EXISTS ("
                    "  SELECT 1 FROM embedding_queue q WHERE q.model_id = m.id AND q.attempts < :max "
                    "  AND (q.lease_until IS NULL OR q.lease_until < now()))"
                ),
                {"max": max_attempts},
            ).scalars()
        )
    with sessions.begin() as session:  # last chunks embedded by a batch that died before marking them
        states.embedded_to_ready(session, limit=limit)
    with sessions.begin() as session:  # reindexes whose last vectors were written by such a batch
        out.switched = store.switch_finished(session)
    out.parse.sort()
    return out
