"""Sync a collection with a folder: what to add, replace, rename, delete and leave alone.

The plan compares each file's sha256 with the newest stored version of its
key (the resolved path). A key that vanished whose bytes reappear under a
new key is a rename: the stored versions move to the new key, nothing is
parsed or embedded again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from docpipe.loading import UNSUPPORTED, FileEntry, classify, expand_paths, read_document

__all__ = ["SyncPlan", "SyncReport", "file_digest", "plan_sync", "scan_root"]


@dataclass
class SyncPlan:
    """Keys per action; `rename` pairs (old key, new key)."""

    add: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)
    rename: list[tuple[str, str]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def plan_sync(files: Mapping[str, bytes], stored: Mapping[str, bytes]) -> SyncPlan:
    """Compare file digests (key → sha256) with the newest stored versions (key → sha256)."""
    plan = SyncPlan()
    new_keys: dict[bytes, list[str]] = {}
    for key in sorted(files):
        sha = files[key]
        if key not in stored:
            new_keys.setdefault(sha, []).append(key)
        elif stored[key] == sha:
            plan.unchanged.append(key)
        else:
            plan.replace.append(key)
    for key in sorted(set(stored) - set(files)):
        candidates = new_keys.get(stored[key])
        if candidates:
            plan.rename.append((key, candidates.pop(0)))
        else:
            plan.delete.append(key)
    plan.add = sorted(k for keys in new_keys.values() for k in keys)
    return plan


def scan_root(root: Path, *, max_bytes: int) -> tuple[dict[str, FileEntry], int]:
    """Supported files under `root` by key (`FileEntry.source`), and the number of unsupported ones skipped."""
    _, found = expand_paths([root])
    entries: dict[str, FileEntry] = {}
    skipped = 0
    for path in found:
        entry = classify(path, max_bytes=max_bytes)
        if entry.media_type == UNSUPPORTED:
            skipped += 1
        else:
            entries[entry.source] = entry
    return entries, skipped


def file_digest(entry: FileEntry) -> bytes:
    """The sha256 ingest gives the file (read the same guarded way; stored again only if it changed)."""
    return read_document(entry)[1]


@dataclass
class SyncReport:
    """What a sync did (or would do, `dry_run`): counts, and the keys behind them in `plan`."""

    collection: str
    root: str
    plan: SyncPlan
    dry_run: bool
    skipped: int = 0  # unsupported files under the root
    failed: int = 0  # new versions refused at ingest, or failed while waited for
    document_ids: list[int] = field(default_factory=list)  # new versions stored by this sync
    seconds: float = 0.0

    def summary(self) -> dict[str, int]:
        p = self.plan
        return {
            "added": len(p.add),
            "replaced": len(p.replace),
            "renamed": len(p.rename),
            "deleted": len(p.delete),
            "unchanged": len(p.unchanged),
            "failed": self.failed,
        }
