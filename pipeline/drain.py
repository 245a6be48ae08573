"""Draining the embed queue with the model always busy.

Three stages overlap: a claimer thread leases the next batch while the model
runs on the current one, and a writer thread COPYs finished vectors. No
transaction is open during a forward pass; at most `depth` batches are leased
ahead, so a dying worker strands little work (its leases expire and the
sweeper hands them out again). While a batch is held, a fourth thread renews
its leases, so a slow but healthy batch never counts as a failed attempt.

Failures: a forward pass that raises on some texts is split until the failing
chunks stand alone (`docpipe.embed.isolate`); their documents fail with the
error and the chunk named, the rest of the batch is written. A transient error
(or one that fails every text) abandons the batch to its lease, recorded on its
documents; a queue row claimed `worker.max_attempts` times fails its document
(`states.fail_embed_exhausted`, here and in the sweeper).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from docpipe import states, store
from docpipe.config import Settings
from docpipe.embed.batching import pack_micro_batches
from docpipe.embed.isolate import Isolated, embed_isolating
from docpipe.retry import RetryPolicy

log = logging.getLogger(__name__)
DEFER_CHECK_S = 15.0  # seconds between a running drain's checks for a bulk load (`embed_pending`)
_DONE = object()


@dataclass
class EmbedStats:
    """What one drain of the embed queue did; times in seconds."""

    chunks: int = 0
    tokens: int = 0
    batches: int = 0
    documents_ready: int = 0
    wall_s: float = 0.0
    forward_s: float = 0.0  # model busy
    claim_s: float = 0.0  # in the claimer thread, overlapped with forward passes
    write_s: float = 0.0  # in the writer thread, overlapped with forward passes
    idle_s: float = 0.0  # model waiting for a claimed batch
    padded_tokens: int = 0  # token slots the forward passes computed, padding included
    index_deferred: bool = False  # this drain dropped the HNSW index for a bulk load
    index_build_s: float = 0.0  # seconds spent rebuilding it at the end
    switched: list[str] = field(default_factory=list)  # collections this drain moved to the model (reindex)
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def padding_waste(self) -> float:
        """Fraction of computed token slots that were padding (length-sorted micro-batches keep it small)."""
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0

    @classmethod
    def total(cls, runs: list[EmbedStats]) -> EmbedStats:
        """Several drains added up."""
        out = cls()
        for run in runs:
            for name in (
                "chunks",
                "tokens",
                "batches",
                "documents_ready",
                "wall_s",
                "forward_s",
                "claim_s",
                "write_s",
                "idle_s",
                "padded_tokens",
                "index_build_s",
            ):
                setattr(out, name, getattr(out, name) + getattr(run, name))
            out.batch_sizes.extend(run.batch_sizes)
        return out

    @property
    def model_busy(self) -> float:
        """Fraction of the drain's wall time the model was computing."""
        return self.forward_s / self.wall_s if self.wall_s else 0.0


class _Stage(threading.Thread):
    """A daemon thread that remembers the exception that stopped it."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as err:  # re-raised in the draining thread
            self.error = err


def embed_pending(
    model: str,
    *,
    sessions: sessionmaker[Session],
    embed: Callable[[list[str]], np.ndarray],
    settings: Settings,
    max_batches: int | None = None,
    depth: int = 2,
    micro_batch_tokens: int | None = None,
    defer_check_s: float = DEFER_CHECK_S,
) -> EmbedStats:
    """Embed pending chunks of `model` across all documents until none is left; returns what it did.

    `micro_batch_tokens`: the embedder's packing budget (padded tokens), for the padding statistics only.
    `defer_check_s`: how often the running drain asks again whether its load calls for dropping the
    model's HNSW index (`store.defer_index_for_bulk_load`): an ingest streams its chunks in while the
    drain runs, so the load is seldom large when the drain starts.
    """
    stats = EmbedStats()
    with sessions.begin() as session:
        found = store.model_row(session, model)
    if found is None:
        return stats
    model_id, _dim = found
    with sessions.begin() as session:  # rows whose claims ran out (workers died on them) fail their documents
        states.fail_embed_exhausted(session, max_attempts=RetryPolicy.of(settings).max_attempts, model_id=model_id)
    started = time.perf_counter()
    _run_stages(
        stats,
        model_id,
        sessions=sessions,
        embed=embed,
        settings=settings,
        max_batches=max_batches,
        depth=depth,
        micro_batch_tokens=micro_batch_tokens or settings.embed.micro_batch_tokens,
        defer_check_s=defer_check_s,
    )
    if max_batches is None:  # drained: build the index a bulk load dropped, switch reindexed collections
        t0 = time.perf_counter()
        with sessions.begin() as session:
            if store.rebuild_deferred_index(session, model_id):
                stats.index_build_s = time.perf_counter() - t0
        with sessions.begin() as session:
            stats.switched = store.switch_finished(session, model_id)
    stats.wall_s = time.perf_counter() - started
    return stats


def _run_stages(
    stats: EmbedStats,
    model_id: int,
    *,
    sessions: sessionmaker[Session],
    embed: Callable[[list[str]], np.ndarray],
    settings: Settings,
    max_batches: int | None,
    depth: int,
    micro_batch_tokens: int,
    defer_check_s: float,
) -> None:
    """Claimer thread → forward passes here → writer thread, until the claimer finds nothing."""
    claimed: queue.Queue = queue.Queue(maxsize=depth)
    finished: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    stranded: list[store.PendingChunk] = []  # claimed when the drain stopped, never offered
    held = HeldLeases(sessions, model_id, lease_s=settings.worker.lease_s, max_hold_s=settings.worker.task_time_limit_s)

    check_bulk_load = _bulk_load_check(stats, model_id, sessions=sessions, settings=settings, every_s=defer_check_s)

    def claim_loop() -> None:
        count = 0
        while not stop.is_set() and (max_batches is None or count < max_batches):
            t0 = time.perf_counter()
            check_bulk_load()
            with sessions.begin() as session:
                batch = store.claim_pending_chunks(
                    session,
                    model_id,
                    max_tokens=settings.embed.max_batch_tokens,
                    lease_s=settings.worker.lease_s,
                    max_attempts=settings.worker.max_attempts,
                )
            held.add(batch)
            stats.claim_s += time.perf_counter() - t0
            if not batch:
                break
            if not _offer(claimed, batch, stop):
                stranded.extend(batch)
                break
            held.settle(batch, lambda: not stop.is_set() and writer.is_alive())
            count += 1
        _offer(claimed, _DONE, stop)

    def write_loop() -> None:
        while (item := finished.get()) is not _DONE:
            batch, result = item
            t0 = time.perf_counter()
            with sessions.begin() as session:
                stats.documents_ready += _write(session, model_id, batch, result)
            held.discard(batch)
            stats.write_s += time.perf_counter() - t0

    claimer, writer = _Stage("embed-claim", claim_loop), _Stage("embed-write", write_loop)
    keeper = _Stage("embed-lease", lambda: held.keep(stop))
    claimer.start()
    writer.start()
    keeper.start()
    try:
        while True:
            t0 = time.perf_counter()
            batch = _get(claimed, claimer)
            t1 = time.perf_counter()
            stats.idle_s += t1 - t0
            if batch is _DONE:
                break
            result = _forward(sessions, embed, batch)
            forward_s = time.perf_counter() - t1
            stats.forward_s += forward_s
            _put(finished, (batch, result), writer)
            counts = [batch[i].token_count for i in result.ok]
            log.info("batch of %d chunks, %d tokens: forward %.3f s", len(batch), sum(counts), forward_s)
            stats.chunks += len(counts)
            stats.tokens += sum(counts)
            stats.padded_tokens += padded_slots(counts, micro_batch_tokens)
            stats.batches += 1
            stats.batch_sizes.append(len(batch))
    finally:
        stop.set()
        if writer.is_alive():
            finished.put(_DONE)
        writer.join()
        claimer.join()
        keeper.join()
        _release_untried(sessions, model_id, claimed, stranded)
    for stage in (claimer, writer, keeper):
        if stage.error is not None:
            raise stage.error


def _bulk_load_check(
    stats: EmbedStats, model_id: int, *, sessions: sessionmaker[Session], settings: Settings, every_s: float
) -> Callable[[], None]:
    """Asks, at most every `every_s` seconds and until it says yes, whether the load now calls for
    dropping the model's HNSW index (`store.defer_index_for_bulk_load`); sets `stats.index_deferred`."""
    check_at = time.monotonic()

    def check() -> None:
        nonlocal check_at
        if stats.index_deferred or time.monotonic() < check_at:
            return
        check_at = time.monotonic() + every_s
        with sessions.begin() as session:
            stats.index_deferred = store.defer_index_for_bulk_load(
                session, model_id, min_pending=settings.embed.bulk_load_chunks
            )

    return check


def _forward(
    sessions: sessionmaker[Session], embed: Callable[[list[str]], np.ndarray], batch: list[store.PendingChunk]
) -> Isolated:
    """The batch's vectors, with the chunks the model fails on set apart (`embed_isolating`)."""
    try:
        return embed_isolating(embed, [c.text for c in batch])
    except Exception as exc:  # transient, or the model fails every text: the batch waits for its lease
        _record_error(sessions, batch, exc)
        raise


def _write(session: Session, model_id: int, batch: list[store.PendingChunk], result: Isolated) -> int:
    """Fail the documents of chunks the model failed on, write the other vectors; documents made ready."""
    errors = {batch[i].chunk_id: f"{type(e).__name__}: {e}"[:500] for i, e in result.failed.items()}
    failed = states.fail_embedding(session, errors)
    for document_id, reason in failed.items():
        log.warning("document %d failed: %s", document_id, reason)
    keep = [j for j, i in enumerate(result.ok) if batch[i].document_id not in failed]
    if not keep or result.vectors is None:
        return 0
    ids = [batch[result.ok[j]].chunk_id for j in keep]
    return store.write_embeddings(session, model_id, ids, result.vectors[keep])


def _record_error(sessions: sessionmaker[Session], batch: list[store.PendingChunk], exc: BaseException) -> None:
    """Best effort: the error becomes the documents' last error (the reason if their attempts run out)."""
    try:
        with sessions.begin() as session:
            ids = sorted({c.document_id for c in batch})
            states.record_embed_error(session, ids, f"embedding: {type(exc).__name__}: {exc}")
    except SQLAlchemyError as err:
        log.warning("could not record the embedding error %r: %s", exc, err)


def _release_untried(
    sessions: sessionmaker[Session], model_id: int, claimed: queue.Queue, untried: list[store.PendingChunk]
) -> None:
    """Give back batches claimed ahead that no forward pass tried (a drain stopped by an error)."""
    while True:
        try:
            item = claimed.get_nowait()
        except queue.Empty:
            break
        if item is not _DONE:
            untried.extend(item)
    if untried:
        try:
            with sessions.begin() as session:
                store.release_chunks(session, model_id, untried)
        except SQLAlchemyError as err:  # their leases expire instead
            log.warning("could not release %d claimed chunks: %s", len(untried), err)


class HeldLeases:
    """The chunk claims a drain holds (claimed, not yet written), renewed every `lease_s / 3` seconds.

    Batches wait behind up to `depth` forward passes (a 65,536-token batch can take minutes on a slow
    CPU), so without renewal a healthy drain's leases could expire and its chunks count a failed
    attempt. A batch held longer than `max_hold_s` (a hung forward pass) is no longer renewed.
    """

    def __init__(self, sessions: sessionmaker[Session], model_id: int, *, lease_s: float, max_hold_s: float) -> None:
        self.sessions = sessions
        self.model_id = model_id
        self.lease_s = lease_s
        self.max_hold_s = max_hold_s
        self.renewals = 0  # rows whose lease was extended, summed over ticks
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)
        self._held: dict[int, tuple[float, list[store.PendingChunk]]] = {}

    def add(self, batch: list[store.PendingChunk]) -> None:
        if batch:
            with self._lock:
                self._held[id(batch)] = (time.monotonic(), batch)

    def discard(self, batch: list[store.PendingChunk]) -> None:
        with self._written:
            self._held.pop(id(batch), None)
            self._written.notify_all()

    def settle(self, batch: list[store.PendingChunk], alive: Callable[[], bool]) -> None:
        """A suspect (a chunk claimed before, alone): wait until it is written, while `alive()`, so nothing
        is claimed ahead of it. A chunk that kills its worker then takes no other claim down with it."""
        if batch[0].attempt > 1:
            while not self.wait_written(batch, 0.5) and alive():
                pass

    def wait_written(self, batch: list[store.PendingChunk], timeout_s: float) -> bool:
        """True once `batch` is no longer held (written, or its documents failed); False after `timeout_s`."""
        with self._written:
            return self._written.wait_for(lambda: id(batch) not in self._held, timeout_s)

    def keep(self, stop: threading.Event) -> None:
        """Renew until `stop` is set (the drain's fourth thread); a failed renewal is tried next tick."""
        while not stop.wait(self.lease_s / 3):
            now = time.monotonic()
            with self._lock:
                due = [c for since, b in self._held.values() if now - since < self.max_hold_s for c in b]
            if not due:
                continue
            try:
                with self.sessions.begin() as session:
                    self.renewals += store.renew_chunk_leases(session, self.model_id, due, lease_s=self.lease_s)
            except SQLAlchemyError as err:
                log.warning("could not renew the leases of %d chunks: %s", len(due), err)


def padded_slots(token_counts: list[int], micro_batch_tokens: int) -> int:
    """Token slots the embedder computes for these chunks: it packs them the same way."""
    batches = pack_micro_batches(token_counts, micro_batch_tokens)
    return sum(len(b) * max(token_counts[i] for i in b) for b in batches)


def _get(q: queue.Queue, producer: _Stage):
    """Next item, or re-raise the producer's error instead of waiting forever."""
    while True:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            if not producer.is_alive():
                if producer.error is not None:
                    raise producer.error from None
                return _DONE


def _put(q: queue.Queue, item: object, consumer: _Stage) -> None:
    while True:
        if not consumer.is_alive():
            raise consumer.error or RuntimeError("embedding writer stopped")
        try:
            q.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def _offer(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put unless the drain is stopping; False when it stopped first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.5)
            return True
        except queue.Full:
            continue
    return False


class DrainGate:
    """One drain at a time per process, and no lost wake-ups.

    A wake-up that arrives while a drain runs does not start a second drain;
    it makes the running one go round again once it finds the queue empty, so
    chunks committed after its last claim are not left for the sweeper.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested = threading.Event()

    def run(self, drain: Callable[[], EmbedStats]) -> list[EmbedStats]:
        """Drain now, or hand the request to the drain already running; the stats of drains run here."""
        self._requested.set()
        done: list[EmbedStats] = []
        while self._requested.is_set():
            if not self._lock.acquire(blocking=False):
                return done  # the running drain will see the request
            try:
                while self._requested.is_set():
                    self._requested.clear()
                    done.append(drain())
            finally:
                self._lock.release()
        return done
