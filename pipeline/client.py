"""The Python API: ingest documents, follow their progress, search them."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from docpipe import states, store
from docpipe.client_lifecycle import LifecycleOps
from docpipe.config import Settings
from docpipe.db import make_engine, make_sessionmaker, resolve_database_url
from docpipe.errors import ConfigError
from docpipe.loading import FileEntry, checked_metadata, collect_files, read_document, size_problem
from docpipe.parse_batches import parse_groups
from docpipe.search import (
    GroupBy,
    Hit,
    SearchMode,
    candidate_depth,
    export_snapshot,
    group_by_document,
    keyword_candidates,
    search_chunks,
)
from docpipe.task_queue import TaskQueue, load_task_queue

__all__ = ["Client", "FailedDocument", "Hit", "Job"]

INGEST_TX_BYTES = 256 * 2**20  # bytes stored per transaction before its documents are enqueued
log = logging.getLogger(__name__)
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # the schema's CHECK, said early and clearly


def check_collection_name(name: str) -> str:
    if not COLLECTION_NAME.fullmatch(name):
        raise ValueError(
            f"invalid collection name {name!r}: "
            "use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def _checked(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    return checked_metadata(metadata)  # a dict that jsonb stores as given (no NaN, NUL, surrogates)


def finished(counts: dict[str, int]) -> int:
    """Documents in a final state (`ready` or `failed`) or deleted, among per-state counts."""
    return sum(counts.get(s, 0) for s in (*store.FINAL_STATES, "deleted"))


@dataclass
class Job:
    """Documents of one `ingest` call. `created` were new; the rest already existed (same bytes)."""

    client: Client
    collection: str
    document_ids: list[int]
    created: int = 0
    skipped: int = 0  # unsupported files found while walking directories
    enqueue_s: float = 0.0  # seconds spent storing and enqueueing

    def counts(self) -> dict[str, int]:
        """Documents of this job per state; `deleted` counts those deleted or replaced by a newer version since."""
        return self.progress().counts

    def progress(self) -> store.JobProgress:
        ids = set(self.document_ids)
        with self.client.sessions.begin() as session:
            found = store.job_progress(session, list(ids))
        if gone := len(ids) - sum(found.counts.values()):
            found.counts["deleted"] = gone
        return found

    def done(self) -> bool:
        return finished(self.counts()) >= len(set(self.document_ids))

    def wait(self, *, progress: bool = False, timeout_s: float | None = None, poll_s: float = 0.5) -> dict[str, int]:
        """Block until every document is `ready`, `failed` or deleted; returns counts per state.

        `progress`: a bar with documents done, pages parsed per second and an ETA.
        """
        total = len(set(self.document_ids))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = _progress_bar(total) if progress else None
        try:
            while True:
                now = self.progress()
                final = finished(now.counts)
                if bar is not None:
                    bar.update(final, now.counts, now.pages)
                if final >= total:
                    return now.counts
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{total - final} of {total} documents not finished: {now.counts}")
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()


class _progress_bar:
    """A rich progress bar over documents finished, with pages parsed per second and an ETA."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[states]}"),
            transient=False,
        )
        self.total = total
        self.started = time.monotonic()
        self.task = self.progress.add_task("ingest", total=total, states="", rate="")
        self.progress.start()

    def update(self, finished: int, counts: dict[str, int], pages: int) -> None:
        states = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        self.progress.update(
            self.task, completed=finished, states=states, rate=rate_text(self.started, finished, self.total, pages)
        )

    def close(self) -> None:
        self.progress.stop()


def rate_text(started: float, finished: int, total: int, pages: int) -> str:
    """'12.3 pages/s, ETA 0:01:05': pages parsed per second since `started` (monotonic s), ETA by documents."""
    elapsed = max(time.monotonic() - started, 1e-9)
    out = f"{pages / elapsed:.1f} pages/s"
    if 0 < finished < total:
        eta = round(elapsed / finished * (total - finished))
        out += f", ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
    return out


@dataclass
class FailedDocument:
    id: int
    collection: str
    source: str
    reason: str | None
    attempts: int
    updated_at: Any = field(default=None)


class Client(LifecycleOps):
    """Enqueue documents and search them.

    ``Client()`` finds the database and broker from ``DATABASE_URL``/``REDIS_URL``
    or the running ``docpipe up`` stack.
    """

    def __init__(
        self,
        database_url: str | None = None,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        task_queue: TaskQueue | None = None,
    ) -> None:
        settings = settings or Settings()
        updates = {k: v for k, v in (("database_url", database_url), ("redis_url", redis_url)) if v}
        self.settings = settings.model_copy(update=updates)
        self.engine = make_engine(resolve_database_url(self.settings))
        self.sessions = make_sessionmaker(self.engine)
        self._task_queue = task_queue
        self._embedders: dict[str, Any] = {}
        self._said_exact: set[str] = set()  # collections whose exact-scan search (deferred index) was logged
        self._background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="docpipe-search")  # BM25 sides

    @property
    def task_queue(self) -> TaskQueue:
        if self._task_queue is None:
            self._task_queue = load_task_queue(self.settings)
        return self._task_queue

    # --- ingest -------------------------------------------------------------

    def ingest(
        self,
        paths: str | Path | Iterable[str | Path],
        *,
        collection: str | None = None,
        metadata: dict[str, Any] | None = None,
        follow_symlinks: bool = False,
    ) -> Job:
        """Store files (bytes + sha256) and enqueue them for parsing; same bytes again are a no-op.

        Symlinks leading out of a walked folder are skipped unless `follow_symlinks`; FIFOs,
        sockets and devices are skipped (a warning names each) and never opened.
        """
        collection, metadata = self._collection_name(collection), _checked(metadata)
        if isinstance(paths, (str, Path)):
            paths = [paths]
        started = time.perf_counter()
        entries, skipped = collect_files(
            paths, max_bytes=self.settings.parse.max_bytes, follow_symlinks=follow_symlinks
        )
        docs = (self._new_document(entry, metadata) for entry in entries)
        return self._store_all(collection, docs, skipped=skipped, started=started)

    def ingest_bytes(
        self,
        documents: Iterable[tuple[str, bytes, str]],
        *,
        collection: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        """Store in-memory documents given as (key, content, media type); the key is their `source`."""
        collection, metadata = self._collection_name(collection), _checked(metadata)
        started = time.perf_counter()
        limit = self.settings.parse.max_bytes
        docs = (
            store.NewDocument(
                key, hashlib.sha256(content).digest(), media_type, content, len(content), dict(metadata or {}),
                size_problem(len(content), max_bytes=limit),
            )
            for key, content, media_type in documents
        )  # fmt: skip
        return self._store_all(collection, docs, started=started)

    def _new_document(self, entry: FileEntry, metadata: dict[str, Any] | None) -> store.NewDocument:
        content, digest = read_document(entry)
        return store.NewDocument(
            entry.source,
            digest,
            entry.media_type,
            content,
            entry.size,
            dict(metadata or {}),
            entry.problem,
        )

    def _collection_name(self, collection: str | None) -> str:
        return check_collection_name(self.settings.default_collection if collection is None else collection)

    def _store_all(
        self, collection: str, docs: Iterable[store.NewDocument], *, started: float, skipped: int = 0
    ) -> Job:
        """Store documents in transactions of up to INGEST_TX_BYTES (or 1,000 documents), enqueueing after each."""
        coll = self._ensure_collection(collection)
        job = Job(self, collection, [], skipped=skipped)
        batch: list[store.NewDocument] = []
        batch_bytes = 0
        for doc in docs:
            batch.append(doc)
            batch_bytes += len(doc.content)
            if batch_bytes >= INGEST_TX_BYTES or len(batch) >= 1000:
                self._store_and_enqueue(coll.id, batch, job)
                batch, batch_bytes = [], 0
        if batch:
            self._store_and_enqueue(coll.id, batch, job)
        job.enqueue_s = time.perf_counter() - started
        return job

    def _ensure_collection(self, name: str) -> store.CollectionInfo:
        with self.sessions.begin() as session:
            if (found := store.get_collection(session, name)) is not None:
                return found
        from docpipe.embed.st_config import read_st_config, resolve_model_dir

        model = self.settings.embed.model
        dim = read_st_config(resolve_model_dir(model, cache_dir=self.settings.model_cache_dir)).dim
        with self.sessions.begin() as session:
            return store.ensure_collection(
                session, name, model=model, dim=dim, analysis=self.settings.search,
                chunking=self.settings.chunk.model_dump(mode="json"),
            )  # fmt: skip

    def _store_and_enqueue(self, collection_id: int, docs: list[store.NewDocument], job: Job) -> None:
        with self.sessions.begin() as session:  # committed before any message is sent
            rows = store.insert_documents(session, collection_id, docs)
            new_ids = [
                doc_id for (doc_id, created), doc in zip(rows, docs, strict=True)
                if created and doc.failed_reason is None
            ]  # fmt: skip
            new_ids += store.twin_versions(session, collection_id, new_ids)  # a rechunk running parses them too
            tasks = parse_groups(session, new_ids, self.settings.parse)
        job.document_ids.extend(doc_id for doc_id, _ in rows)
        job.created += sum(created for _, created in rows)
        if tasks:
            self.task_queue.enqueue_parse(tasks)

    # --- search -------------------------------------------------------------

    def embedder(self, model: str):
        """The query-side embedder of `model`, loaded once per client."""
        if model not in self._embedders:
            from docpipe.embed import load_model_embedder

            self._embedders[model] = load_model_embedder(self.settings, model, purpose="queries")
        return self._embedders[model]

    def search(
        self,
        query: str,
        *,
        collection: str | None = None,
        k: int = 10,
        rerank: bool = False,
        mode: SearchMode = "hybrid",
        where: dict[str, Any] | None = None,
        group_by: GroupBy = None,
        timeout_s: float = 60.0,
    ) -> list[Hit]:
        """Top `k` chunks for `query` (or documents, with `group_by="document"`: each one's best chunk).

        `where` filters on document metadata (JSON containment). With `rerank`,
        the fused list's best `rerank.candidates` go to the cross-encoder.
        """
        if not query.strip():
            raise ValueError("empty query")
        config = self.settings.search
        if not 1 <= k <= config.max_k:
            raise ValueError(f"k must be between 1 and {config.max_k} (setting search.max_k), got {k}")
        if len(query) > config.max_query_chars:
            raise ValueError(
                f"query is {len(query)} characters, more than {config.max_query_chars} (setting search.max_query_chars)"
            )
        if mode not in ("hybrid", "vector", "text"):
            raise ValueError(f"mode must be 'hybrid', 'vector' or 'text', not {mode!r}")
        if group_by not in (None, "document"):
            raise ValueError(f"group_by must be None or 'document', not {group_by!r}")
        collection = self._collection_name(collection)
        if where is not None and not isinstance(where, dict):
            raise ValueError("where must be a dict (JSON containment filter on document metadata)")
        rerank_n = self.settings.rerank.candidates if rerank else 0
        depth = candidate_depth(k, config, mode=mode, group_by=group_by, rerank_candidates=rerank_n)
        fused_group = None if rerank else group_by  # a reranked list is grouped after the cross-encoder
        # One repeatable-read snapshot: the model read here is the one the query is embedded with (a reindex
        # may switch it at any time), and the BM25 side, read meanwhile on another connection while the query
        # is embedded, sees the same document versions as the dense side.
        with self.sessions.begin() as session:
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            coll = store.get_collection(session, collection)
            if coll is None:
                raise ConfigError(f"unknown collection: {collection!r}")
            self._say_if_exact(coll, mode)
            keyword = None
            if mode == "hybrid":
                keyword = self._background.submit(
                    keyword_candidates, self.sessions, export_snapshot(session), query=query, collection=collection,
                    depth=depth, where=where, per_term=config.bm25_per_term,
                )  # fmt: skip
            try:
                query_vec = None if mode == "text" else self.embedder(coll.model).embed_query(query)
                hits = search_chunks(
                    session, query=query, query_vec=query_vec, collection=collection, depth=depth, config=config,
                    mode=mode, where=where, limit=max(k, rerank_n), group_by=fused_group, keyword=keyword,
                )  # fmt: skip
            finally:
                if keyword is not None:
                    wait([keyword])  # never leave the other connection's query behind
        if rerank and hits:
            hits = self._rerank(query, hits[:rerank_n], timeout_s=timeout_s)
            if group_by == "document":
                hits = group_by_document(hits)
        return hits[:k]

    def _say_if_exact(self, coll: store.CollectionInfo, mode: SearchMode) -> None:
        """Log once per collection, while its model's HNSW index is dropped for a bulk load, that searches scan."""
        if not coll.index_deferred:
            self._said_exact.discard(coll.name)
        elif mode != "text" and coll.name not in self._said_exact:
            self._said_exact.add(coll.name)
            log.warning(
                "collection %r: the HNSW index of %s is being rebuilt after a bulk load; vector search scans "
                "exactly until it is built (docpipe status)", coll.name, coll.model,
            )  # fmt: skip

    def _rerank(self, query: str, hits: list[Hit], *, timeout_s: float) -> list[Hit]:
        """`hits` re-ordered by the cross-encoder on the rerank queue; `score` becomes its score."""
        try:
            scored = self.task_queue.rerank(query, [h.chunk_id for h in hits], timeout_s=timeout_s)
        except Exception as err:  # the worker's load or scoring error, or no worker answering in time
            raise ConfigError(
                f"rerank failed with cross-encoder {self.settings.rerank.model!r} "
                f"(setting DOCPIPE_RERANK__MODEL: a Hugging Face id, which needs the hub, or a local directory): "
                f"{type(err).__name__}: {err}"
            ) from err
        by_id = {h.chunk_id: h for h in hits}
        out = []
        for cid, score in scored:
            hit = by_id[cid]
            hit.score = score
            out.append(hit)
        return out

    # --- operations -----------------------------------------------------------

    def status(self, collection: str | None = None) -> dict[str, Any]:
        """Per collection: documents per state, `no_text` (ready, nothing to search) and `problems`
        (failed + no_text), chunk and vector counts."""
        with self.sessions.begin() as session:
            return store.collection_status(session, collection)

    def failed(self, collection: str | None = None, *, limit: int = 1000) -> list[FailedDocument]:
        """Failed documents with their reasons, newest first."""
        with self.sessions.begin() as session:
            rows = session.execute(
                text(
                    "SELECT d.id, c.name, d.source, d.last_error, d.attempts, d.updated_at FROM documents d "
                    "JOIN collections c ON c.id = d.collection_id WHERE d.state = 'failed' "
                    "AND (CAST(:c AS text) IS NULL OR c.name = :c) ORDER BY d.updated_at DESC, d.id LIMIT :l"
                ),
                {"c": collection, "l": limit},
            ).all()
        return [FailedDocument(*r) for r in rows]

    def retry_failed(self, collection: str | None = None, ids: Sequence[int] | None = None) -> int:
        """Queue failed documents again with a fresh attempt count; returns how many."""
        with self.sessions.begin() as session:
            retried = states.requeue_failed(session, collection=collection, ids=ids)
            tasks = parse_groups(session, retried, self.settings.parse)
        if tasks:
            self.task_queue.enqueue_parse(tasks)
        return len(retried)

    def purge_failed(self, collection: str | None = None) -> int:
        """Delete failed documents (so the same bytes can be ingested again); returns how many."""
        with self.sessions.begin() as session:
            return int(
                session.execute(
                    text(
                        "DELETE FROM documents d USING collections c WHERE c.id = d.collection_id "
                        "AND d.state = 'failed' AND (CAST(:c AS text) IS NULL OR c.name = :c)"
                    ),
                    {"c": collection},
                ).rowcount
                or 0
            )

    def close(self) -> None:
        self._background.shutdown(wait=True)
        if self._task_queue is not None:
            self._task_queue.close()
        self.engine.dispose()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
