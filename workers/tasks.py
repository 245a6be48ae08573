"""Thin Celery tasks: open the worker context, call one pipeline function, enqueue the next step."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any, NoReturn

from celery import shared_task
from celery.signals import worker_init, worker_process_shutdown
from sqlalchemy.exc import OperationalError

from docpipe import drain, processing, search, store, sweeper
from docpipe.retry import RetryPolicy
from docpipe.workers import metrics
from docpipe.workers.app import app
from docpipe.workers.context import get_context
from docpipe.workers.queues import (
    EMBED_QUEUE,
    EMBED_TASK,
    PARSE_BATCH_TASK,
    PARSE_PART_TASK,
    PARSE_QUEUE,
    PARSE_TASK,
    RERANK_TASK,
    SWEEP_TASK,
)

log = logging.getLogger(__name__)
TRANSIENT = processing.TRANSIENT  # errors a task retries (RetryPolicy); the rest end the task
WAKE_TTL_S = 60  # a pending-wake-up mark older than this is ignored (one more message is harmless)


def _ctx():
    return get_context(app.settings)


def _retry(task: Any, exc: Exception) -> NoReturn:
    """Re-send this message after the policy's backoff, or re-raise `exc` when it was re-sent often enough.

    The document's attempts are counted by its claims in the database (`RetryPolicy`), not here; the
    retry keeps the task id, which is the claim token that lets it resume its own claim.
    """
    policy = RetryPolicy.of(app.settings)
    raise task.retry(exc=exc, countdown=policy.delay_s(task.request.retries), max_retries=policy.message_retries)


@shared_task(bind=True, name=PARSE_TASK, ignore_result=True)
def parse(self: Any, document_id: int) -> dict:
    """Parse and chunk one document; wake the embedder for its model."""
    return _parse_documents(self, [document_id])


@shared_task(bind=True, name=PARSE_BATCH_TASK, ignore_result=True)
def parse_batch(self: Any, document_ids: list[int]) -> dict:
    """Parse and chunk several small documents in one claim and one write; wake the embedders once."""
    return _parse_documents(self, document_ids)


def _parse_documents(task: Any, document_ids: list[int]) -> dict:
    """`processing.parse_documents` under the task's id as claim token; a long PDF's other page ranges
    go to any free parse process. Documents a transient error sent back are parsed again by the task's
    retry (same token); the others are settled and not claimed again."""
    ctx = _ctx()
    try:
        with metrics.PARSE_SECONDS.time():
            done = processing.parse_documents(
                document_ids, sessions=ctx.sessions, parser=ctx.parser, settings=ctx.settings, token=task.request.id
            )
    except TRANSIENT as exc:
        _retry(task, exc)
    for out in done.outcomes:
        for part in out.parts:
            parse_part.delay(out.document_id, part, out.attempt)
    _next_step(done.outcomes)
    if done.retry is not None:
        _retry(task, done.retry)
    return {"documents": len(document_ids), "states": {out.document_id: out.state for out in done.outcomes}}


@shared_task(bind=True, name=PARSE_PART_TASK, ignore_result=True)
def parse_part(self: Any, document_id: int, part: int, attempt: int) -> dict:
    """Parse one page range of a split PDF; the last range to finish chunks the document."""
    ctx = _ctx()
    try:
        with metrics.PARSE_SECONDS.time():
            out = processing.parse_part(
                document_id, part, attempt, sessions=ctx.sessions, parser=ctx.parser, settings=ctx.settings,
                token=self.request.id,
            )  # fmt: skip
    except TRANSIENT as exc:
        _retry(self, exc)
    for new in out.parts:  # the rest of a range its OCR budget stopped short
        parse_part.delay(document_id, new, out.attempt)
    _next_step([out])
    return {"document_id": document_id, "state": out.state, "chunks": out.chunks, "parts": len(out.parts)}


def _next_step(outcomes: list[processing.ParseOutcome]) -> None:
    """Count the outcomes; wake the embedders of the documents now waiting for them, once per model
    (the collection's model and the one a reindex is moving it to)."""
    for out in outcomes:
        metrics.DOCUMENTS.labels(outcome=out.state).inc()
    for model in sorted({m for out in outcomes if out.state == "embedding" for m in out.models}):
        wake_embedder(model)


@shared_task(bind=True, name=EMBED_TASK, ignore_result=True)
def embed(self: Any, model: str) -> dict:
    """Drain the embed queue of `model` across all documents (one drain per process at a time).

    Retried like a parse (`RetryPolicy`); chunks a drain left claimed go back after their lease,
    and the sweeper wakes a model with claimable chunks, so an exhausted message loses nothing.
    """
    ctx = _ctx()
    _clear_wake_mark(model)  # before draining: chunks committed from now on are seen by this drain
    try:
        embedder = ctx.embedder(model)
        runs = ctx.drain_gate(model).run(
            lambda: drain.embed_pending(
                model,
                sessions=ctx.sessions,
                embed=embedder.embed,
                settings=ctx.settings,
                micro_batch_tokens=embedder.micro_batch_tokens,
            )
        )
    except TRANSIENT as exc:
        _retry(self, exc)
    if not runs:
        return {"handed_over": "a drain already running in this worker will pick these chunks up"}
    stats = drain.EmbedStats.total(runs)
    metrics.CHUNKS_EMBEDDED.inc(stats.chunks)
    metrics.TOKENS_EMBEDDED.inc(stats.tokens)
    metrics.PADDED_TOKENS.inc(stats.padded_tokens)
    metrics.FORWARD_SECONDS.inc(stats.forward_s)
    metrics.DRAIN_SECONDS.inc(stats.wall_s)
    log.info(
        "embedded %d chunks (%d tokens) in %d batches, %.1f s, model busy %.0f%%, padding %.1f%%, %d documents ready; "
        "forward %.2f s, claim %.2f s, write %.2f s, idle %.2f s, index %.2f s",
        stats.chunks,
        stats.tokens,
        stats.batches,
        stats.wall_s,
        100 * stats.model_busy,
        100 * stats.padding_waste,
        stats.documents_ready,
        stats.forward_s,
        stats.claim_s,
        stats.write_s,
        stats.idle_s,
        stats.index_build_s,
    )
    return {
        "chunks": stats.chunks,
        "batches": stats.batches,
        "documents_ready": stats.documents_ready,
        "wall_s": round(stats.wall_s, 3),
        "model_busy": round(stats.model_busy, 3),
        "padding_waste": round(stats.padding_waste, 4),
    }


def _wake_key(model: str) -> str:
    return f"docpipe:embed-wake:{model}"


@contextlib.contextmanager
def _broker_redis() -> Iterator[object]:
    """The Redis client of a pooled broker connection."""
    with app.pool.acquire(block=True) as conn:
        yield conn.default_channel.client


def wake_embedder(model: str) -> None:
    """Send an embed wake-up unless one is queued and not yet started: one message per drain, not per document.

    No wake-up is lost: a skipped sender committed its chunks while the mark was
    set, and the queued task clears the mark before it starts claiming.
    """
    try:
        with _broker_redis() as redis:
            if not redis.set(_wake_key(model), "1", nx=True, ex=WAKE_TTL_S):
                return
    except Exception as exc:  # a broker without SET NX: wake every time
        log.debug("wake-up mark unavailable: %s", exc)
    embed.delay(model)


def _clear_wake_mark(model: str) -> None:
    try:
        with _broker_redis() as redis:
            redis.delete(_wake_key(model))
    except Exception as exc:
        log.debug("wake-up mark unavailable: %s", exc)


@shared_task(name=RERANK_TASK, autoretry_for=(OperationalError,), max_retries=2)
def rerank(query: str, chunk_ids: list[int]) -> list[list[float]]:
    """Score (query, chunk) pairs with the cross-encoder; returns [chunk_id, score] best first."""
    ctx = _ctx()
    deadline = time.monotonic() + ctx.settings.rerank.time_limit_s  # enforced inside (threads pool)
    with metrics.RERANK_SECONDS.time():
        scored = search.rerank_chunks(
            query, chunk_ids[: ctx.settings.rerank.candidates], sessions=ctx.sessions, reranker=ctx.reranker,
            deadline=deadline,
        )  # fmt: skip
    return [[cid, score] for cid, score in scored]


@shared_task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> dict:
    """Re-enqueue work whose lease expired or whose message was lost; fold BM25 df deltas."""
    ctx = _ctx()
    with ctx.sessions.begin() as session:
        store.compact_term_df(session)
    with app.connection_for_read() as conn:  # counted across the queue's priority lists
        backlog = conn.default_channel.queue_declare(PARSE_QUEUE).message_count
    found = sweeper.find_stale_work(sessions=ctx.sessions, settings=ctx.settings, parse_backlog=backlog)
    for doc_id in found.parse:
        parse.delay(doc_id)
    for model in found.embed_models:
        embed.delay(model)
    return {"parse": len(found.parse), "embed": found.embed_models, "failed": found.failed}


@worker_init.connect
def _serve_metrics(**_: object) -> None:
    if port := app.settings.worker.metrics_port:
        metrics.serve(port)


@worker_init.connect
def _load_embedder_before_work(sender: object = None, **_: object) -> None:
    """An embed worker loads its model (and makes the `auto` choice, if none is cached) before its first task."""
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    if queues is None or EMBED_QUEUE not in (queues.consume_from or queues):
        return
    try:
        _ctx().embedder(app.settings.embed.model)
    except Exception:  # the first embed task reports it, and retries
        log.exception("could not load the embedding model at start")


@worker_process_shutdown.connect
def _close_process(pid: int | None = None, **_: object) -> None:
    ctx = _ctx()
    if "parser" in ctx.__dict__:
        ctx.parser.close()
    metrics.process_exited(pid or os.getpid())
