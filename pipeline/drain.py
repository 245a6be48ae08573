"""Draining the embed queue with the model always busy.

Three stages overlap: a claimer thread leases the next batch while the model
runs on the current one, and a writer thread COPYs finished vectors. No
transaction is open during a forward pass; at most `depth` batches are leased
ahead, so a dying worker strands little work (its leases expire and the
sweeper hands them out again).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from docpipe import store
from docpipe.config import Settings
from docpipe.embed.batching import pack_micro_batches

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
) -> EmbedStats:
    """Embed pending chunks of `model` across all documents until none is left; returns what it did.

    `micro_batch_tokens`: the embedder's packing budget (padded tokens), for the padding statistics only.
    """
    stats = EmbedStats()
    with sessions.begin() as session:
        found = store.model_row(session, model)
    if found is None:
        return stats
    model_id, _dim = found
    with sessions.begin() as session:
        stats.index_deferred = store.defer_index_for_bulk_load(
            session, model_id, min_pending=settings.embed.bulk_load_chunks
        )
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
) -> None:
    """Claimer thread → forward passes here → writer thread, until the claimer finds nothing."""
    claimed: queue.Queue = queue.Queue(maxsize=depth)
    finished: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def claim_loop() -> None:
        count = 0
        while not stop.is_set() and (max_batches is None or count < max_batches):
            t0 = time.perf_counter()
            with sessions.begin() as session:
                batch = store.claim_pending_chunks(
                    session, model_id, max_tokens=settings.embed.max_batch_tokens, lease_s=settings.worker.lease_s
                )
            stats.claim_s += time.perf_counter() - t0
            if not batch or not _offer(claimed, batch, stop):
                break
            count += 1
        _offer(claimed, _DONE, stop)

    def write_loop() -> None:
        while (item := finished.get()) is not _DONE:
            batch, vectors = item
            t0 = time.perf_counter()
            with sessions.begin() as session:
                ids = [c.chunk_id for c in batch]
                stats.documents_ready += store.write_embeddings(session, model_id, ids, vectors)
            stats.write_s += time.perf_counter() - t0

    claimer, writer = _Stage("embed-claim", claim_loop), _Stage("embed-write", write_loop)
    claimer.start()
    writer.start()
    try:
        while True:
            t0 = time.perf_counter()
            batch = _get(claimed, claimer)
            t1 = time.perf_counter()
            stats.idle_s += t1 - t0
            if batch is _DONE:
                break
            vectors = embed([c.text for c in batch])
            stats.forward_s += time.perf_counter() - t1
            _put(finished, (batch, vectors), writer)
            counts = [c.token_count for c in batch]
            stats.chunks += len(batch)
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
    for stage in (claimer, writer):
        if stage.error is not None:
            raise stage.error


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
