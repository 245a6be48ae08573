"""The lifecycle half of the Python API: delete, update metadata, sync, reindex, problems (mixed into `Client`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docpipe import states, store
from docpipe.config import TokenChunker
from docpipe.errors import ConfigError
from docpipe.loading import checked_metadata, display_path
from docpipe.parse_batches import parse_groups
from docpipe.sync import SyncReport, file_digest, plan_sync, scan_root

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from docpipe.config import Settings
    from docpipe.task_queue import TaskQueue

__all__ = ["LifecycleOps"]


class LifecycleOps:
    """Operations on stored documents and collections; `Client` provides sessions, settings and ingest."""

    sessions: sessionmaker[Session]
    settings: Settings
    task_queue: TaskQueue

    def _selection(
        self,
        ids: Sequence[int] | None,
        key: str | Sequence[str] | None,
        prefix: str | None,
        glob: str | None,
        where: dict[str, Any] | None,
    ) -> store.Selection:
        if prefix is not None and glob is not None:
            raise ValueError("give prefix or glob, not both")
        like = store.prefix_to_like(prefix) if prefix is not None else store.glob_to_like(glob) if glob else None
        keys = [key] if isinstance(key, str) else key
        return store.Selection(ids=ids, keys=keys, key_like=like, where=where)

    def delete(
        self,
        ids: Sequence[int] | None = None,
        *,
        key: str | Sequence[str] | None = None,
        prefix: str | None = None,
        glob: str | None = None,
        where: dict[str, Any] | None = None,
        collection: str | None = None,
        dry_run: bool = False,
    ) -> list[store.DocumentRef]:
        """Delete documents (every version of them) by ids, key(s), key prefix or glob, and/or metadata filter.

        All criteria given must hold. Chunks, vectors and queue rows go in the
        same transaction; workers still busy with them find them gone. Keys of
        files are their resolved paths. `dry_run`: list what would go, delete nothing.
        """
        collection = self._collection_name(collection)
        sel = self._selection(ids, key, prefix, glob, where)
        with self.sessions.begin() as session:
            coll = self._existing_collection(session, collection)
            if dry_run:
                return store.select_documents(session, coll.id, sel)
            return store.delete_documents(session, collection, sel)

    def update_metadata(
        self,
        where_or_ids: dict[str, Any] | Sequence[int],
        patch: dict[str, Any],
        *,
        collection: str | None = None,
        replace: bool = False,
    ) -> int:
        """Merge `patch` into the metadata of documents chosen by a metadata filter (dict) or ids; how many.

        A None value removes that key; `replace` makes `patch` the whole metadata.
        Nothing is parsed or embedded again: search filters see it at once.
        """
        collection, patch = self._collection_name(collection), checked_metadata(patch)
        if isinstance(where_or_ids, dict):
            sel = store.Selection(where=where_or_ids)
        else:
            sel = store.Selection(ids=list(where_or_ids))
        with self.sessions.begin() as session:
            coll = self._existing_collection(session, collection)
            return store.update_metadata(session, coll.id, sel, patch, replace=replace)

    def sync(
        self,
        root: str | Path,
        *,
        collection: str | None = None,
        dry_run: bool = False,
        metadata: dict[str, Any] | None = None,
        wait: bool = False,
        timeout_s: float | None = None,
    ) -> SyncReport:
        """Make the collection's documents under `root` match the files there: add, replace, rename, delete.

        Unchanged files cost a read and a hash. Running it again changes nothing. Symlinks leading
        out of `root` and special files are skipped, as in `ingest`.
        `wait`: block until the new versions are ready or failed (`failed` then counts both kinds).
        """
        collection, metadata = self._collection_name(collection), checked_metadata(metadata)
        started = time.perf_counter()
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"not a directory: {root}")
        entries, skipped = scan_root(root, max_bytes=self.settings.parse.max_bytes)
        digests = {key: file_digest(entry) for key, entry in entries.items()}
        with self.sessions.begin() as session:  # a dry run creates no collection
            coll = store.get_collection(session, collection)
        if coll is None and not dry_run:
            coll = self._ensure_collection(collection)
        stored: dict[str, store.KeyVersion] = {}
        if coll is not None:
            with self.sessions.begin() as session:
                prefix = display_path(root).rstrip("/") + "/"  # keys are display paths (see FileEntry.source)
                stored = store.key_versions(session, coll.id, store.prefix_to_like(prefix))
        plan = plan_sync(digests, {key: v.sha256 for key, v in stored.items()})
        report = SyncReport(collection, str(root), plan, dry_run, skipped=skipped)
        changed = [entries[key] for key in (*plan.add, *plan.replace)]
        report.failed = sum(entry.problem is not None for entry in changed)
        if not dry_run:
            with self.sessions.begin() as session:
                for old, new in plan.rename:
                    store.rename_document(session, coll.id, old, new)
                if plan.delete:
                    store.delete_documents(session, collection, store.Selection(keys=plan.delete))
            if changed:
                job = self._store_all(collection, (self._new_document(e, metadata) for e in changed), started=started)
                report.document_ids = job.document_ids
                if wait:
                    report.failed = job.wait(timeout_s=timeout_s).get(states.DocState.FAILED, 0)
        report.seconds = time.perf_counter() - started
        return report

    def _existing_collection(self, session: Any, name: str) -> store.CollectionInfo:
        if (coll := store.get_collection(session, name)) is None:
            raise ConfigError(f"unknown collection: {name!r}")
        return coll

    def problems(self, collection: str | None = None, *, limit: int = 1000) -> list[store.Problem]:
        """Documents that are not searchable (failed, or no text found) with their reasons, newest first."""
        with self.sessions.begin() as session:
            return store.problems(session, collection, limit=limit)

    def reindex(
        self,
        collection: str | None = None,
        *,
        model: str | None = None,
        rechunk: TokenChunker | dict[str, Any] | None = None,
    ) -> store.ReindexProgress:
        """Embed the collection with `model`, or chunk it again with `rechunk`, in the background; then switch.

        `model` alone: the stored chunks are embedded with it; nothing is parsed again.
        `rechunk`: chunker settings (a `TokenChunker`, or a dict of its fields over the
        collection's current ones); every document is parsed again from its stored
        bytes and embedded (with `model` when given). Either way searches answer
        from the current chunks and model until all the new ones are embedded, then
        one transaction switches the collection. A document whose re-parse fails
        holds the switch and is reported (`reindex_status().rechunk.failed`,
        `problems()`); calling `reindex` again with the same settings retries it.
        `model`: a Hugging Face id or a local sentence-transformers directory.
        """
        from docpipe.embed.st_config import read_st_config, resolve_model_dir

        collection = self._collection_name(collection)
        if model is None and rechunk is None:
            raise ConfigError("reindex needs a model, new chunker settings (rechunk), or both")
        dim = read_st_config(resolve_model_dir(model, cache_dir=self.settings.model_cache_dir)).dim if model else 0
        with self.sessions.begin() as session:
            coll = self._existing_collection(session, collection)
            model_id = store.ensure_model(session, model, dim) if model else None
            if rechunk is None:
                assert model_id is not None
                store.start_reindex(session, coll.id, model_id)
            else:
                chunker = self._chunker(coll.chunking, rechunk).model_dump(mode="json")
                twins = parse_groups(
                    session, store.start_rechunk(session, coll.id, chunker, model_id), self.settings.parse
                )
        with self.sessions.begin() as session:  # a collection without chunks switches at once
            store.switch_finished(session, model_id)
        if rechunk is None:
            assert model is not None
            self.task_queue.enqueue_embed(model)
        elif twins:
            self.task_queue.enqueue_parse(twins)
        return self.reindex_status(collection)

    def _chunker(self, current: dict[str, Any] | None, rechunk: TokenChunker | dict[str, Any]) -> TokenChunker:
        """`rechunk` as whole settings: a dict's fields override the collection's (or this client's) current ones."""
        if isinstance(rechunk, TokenChunker):
            return rechunk
        if not isinstance(rechunk, dict):
            raise ConfigError("rechunk must be a TokenChunker or a dict of its fields")
        base = current if current is not None else self.settings.chunk.model_dump(mode="json")
        try:
            return TokenChunker.model_validate({**base, **rechunk})
        except ValueError as err:
            raise ConfigError(f"invalid chunker settings: {err}") from err

    def reindex_status(self, collection: str | None = None) -> store.ReindexProgress:
        """The model searches use, the one being embedded (None: nothing running), chunks done, rechunk progress."""
        collection = self._collection_name(collection)
        with self.sessions.begin() as session:
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})  # one snapshot
            found = store.reindex_progress(session, collection)
        if found is None:
            raise ConfigError(f"unknown collection: {collection!r}")
        return found

    def drop_vectors(self, model: str, *, collection: str | None = None) -> int:
        """Delete the collection's vectors of `model` (one it no longer searches with); how many."""
        collection = self._collection_name(collection)
        with self.sessions.begin() as session:
            coll = self._existing_collection(session, collection)
            found = store.model_row(session, model)
            if found is None:
                raise ConfigError(f"unknown model: {model!r}")
            return store.drop_model_vectors(session, coll.id, found[0])
