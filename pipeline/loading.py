"""Turning the paths, directories and globs a user names into documents to store."""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from docpipe.errors import ConfigError
from docpipe.parse import detect_media_type

HEAD_BYTES = 8192  # bytes read to sniff a file's type
UNSUPPORTED = "application/octet-stream"


@dataclass(frozen=True)
class FileEntry:
    """One file to ingest. `problem` set means it is stored as failed with that reason."""

    path: Path
    media_type: str
    size: int
    problem: str | None = None


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            yield path


def expand_paths(specs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(files named explicitly, files found by walking directories or globs)."""
    explicit: list[Path] = []
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            explicit.append(path)
        elif path.is_dir():
            found.extend(_walk(path))
        elif glob.has_magic(str(spec)):
            for match in sorted(glob.glob(str(path), recursive=True)):
                m = Path(match)
                found.extend(_walk(m) if m.is_dir() else [m] if m.is_file() else [])
        else:
            raise ConfigError(f"no such file or directory: {spec}")
    return explicit, found


def classify(path: Path, *, max_bytes: int) -> FileEntry:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    media_type = detect_media_type(path.name, head)
    if media_type is None:
        return FileEntry(path, UNSUPPORTED, size, f"unsupported file type: {path.suffix or path.name}")
    return FileEntry(path, media_type, size, size_problem(size, max_bytes=max_bytes))


def size_problem(size: int, *, max_bytes: int) -> str | None:
    """Why a document of `size` bytes is not ingested (empty, or over `max_bytes`), or None."""
    if size == 0:
        return "empty file (0 bytes)"
    if size > max_bytes:
        return f"file is too large: {size / 2**20:.1f} MiB, limit {max_bytes / 2**20:.0f} MiB"
    return None


def collect_files(specs: Iterable[str | Path], *, max_bytes: int) -> tuple[list[FileEntry], int]:
    """Files to ingest and the number skipped (unsupported files found by walking a directory).

    A file named explicitly is always kept: if it cannot be ingested, it is
    stored as failed with the reason, so the user sees why.
    """
    specs = list(specs)
    if not specs:
        raise ConfigError("no paths given")
    explicit, found = expand_paths(specs)
    entries = [classify(p, max_bytes=max_bytes) for p in explicit]
    skipped = 0
    for path in found:
        entry = classify(path, max_bytes=max_bytes)
        if entry.media_type == UNSUPPORTED:
            skipped += 1
        else:
            entries.append(entry)
    if not entries:
        raise ConfigError(f"no supported documents found in {', '.join(map(str, specs))} ({skipped} skipped)")
    unique = {e.path.resolve(): e for e in entries}
    return list(unique.values()), skipped


def read_document(entry: FileEntry) -> tuple[bytes, bytes]:
    """(content, sha256). A file with a problem keeps no content; its digest names the path instead."""
    if entry.problem is not None:
        return b"", hashlib.sha256(f"not ingested:{entry.path.resolve()}:{entry.size}".encode()).digest()
    data = entry.path.read_bytes()
    return data, hashlib.sha256(data).digest()
