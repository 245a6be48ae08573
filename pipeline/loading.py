"""Turning the paths, directories and globs a user names into documents to store.

Hostile folders are expected: symlinks are not followed out of the folder being walked unless
asked (``follow_symlinks``), special files (FIFOs, sockets, devices) are skipped and never
opened, walks terminate on symlink loops, and file names that are not UTF-8 get an escaped key.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docpipe.errors import ConfigError
from docpipe.parse import detect_media_type

HEAD_BYTES = 8192  # bytes read to sniff a file's type
UNSUPPORTED = "application/octet-stream"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileEntry:
    """One file to ingest. `problem` set means it is stored as failed with that reason."""

    path: Path
    media_type: str
    size: int
    problem: str | None = None

    @property
    def source(self) -> str:
        """The document key: the resolved path, with undecodable bytes of its name escaped."""
        return display_path(self.path.resolve())


def display_path(path: Path | str) -> str:
    """``path`` as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _special_kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is ("FIFO", "socket", "device"), else None."""
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return None


def _skip(path: Path, reason: str) -> None:
    log.warning("skipped %s: %s", display_path(path), reason)


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _walk(root: Path, *, follow_symlinks: bool) -> Iterator[Path]:
    """Regular files under ``root`` (hidden names skipped), sorted per directory.

    A symlink is followed only when its target stays inside ``root``, or with ``follow_symlinks``;
    each directory is entered once (by device and inode), so symlink loops end the walk.
    """
    real_root = root.resolve()
    seen: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            info = directory.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(directory), key=lambda e: e.name, reverse=True)
        except OSError as err:
            _skip(directory, f"cannot read directory ({err.strerror})")
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                continue
            if entry.is_symlink() and not follow_symlinks and not _within(path.resolve(), real_root):
                _skip(path, "symlink out of the folder (use follow_symlinks / --follow-symlinks)")
                continue
            try:
                mode = path.stat().st_mode  # follows the (allowed) symlink; never opens the file
            except OSError as err:
                _skip(path, f"cannot stat ({err.strerror})")
                continue
            if stat.S_ISDIR(mode):
                pending.append(path)
            elif stat.S_ISREG(mode):
                yield path
            else:
                _skip(path, f"{_special_kind(mode) or 'special file'}, not a regular file (never opened)")


def _segment_regex(segment: str) -> str:
    """One path segment of a glob as a regex that never crosses "/"."""
    out, i = [], 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := segment.find("]", i + 2)) > 0:
            body = segment[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _glob(pattern: str, *, follow_symlinks: bool) -> Iterator[Path]:
    """Files matching ``pattern`` ("**" spans directories), found with the loop-safe walk."""
    parts = Path(pattern).expanduser().parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    rest = parts[fixed:]
    regex = "".join(
        "(?:[^/]+/)*" if part == "**" and i < len(rest) - 1 else ".*" if part == "**" else
        _segment_regex(part) + ("/" if i < len(rest) - 1 else "")
        for i, part in enumerate(rest)
    )  # fmt: skip
    matcher = re.compile(regex + r"(?:/.*)?\Z", re.DOTALL)  # a matched directory brings its files
    if root.is_dir():
        for path in _walk(root, follow_symlinks=follow_symlinks):
            if matcher.match(path.relative_to(root).as_posix()):
                yield path


def expand_paths(specs: Iterable[str | Path], *, follow_symlinks: bool = False) -> tuple[list[Path], list[Path]]:
    """(files named explicitly, files found by walking directories or globs).

    A special file named explicitly is an error (it is never opened, so a FIFO cannot hang us).
    """
    explicit: list[Path] = []
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = None
        if mode is not None and stat.S_ISREG(mode):
            explicit.append(path)
        elif mode is not None and stat.S_ISDIR(mode):
            found.extend(sorted(_walk(path, follow_symlinks=follow_symlinks)))
        elif mode is not None:
            kind = _special_kind(mode) or "special file"
            raise ConfigError(f"{display_path(spec)} is a {kind}, not a regular file: not ingested")
        elif glob.has_magic(str(spec)):
            found.extend(sorted(_glob(str(spec), follow_symlinks=follow_symlinks)))
        else:
            raise ConfigError(f"no such file or directory: {display_path(spec)}")
    return explicit, found


def _read_regular(path: Path, limit: int | None = None) -> bytes:
    """Up to ``limit`` bytes (all without one) of ``path``, refusing anything not a regular file.

    Opened non-blocking and checked with fstat, so a file swapped for a FIFO after the walk
    cannot block the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{display_path(path)} is a {_special_kind(mode) or 'special file'}, not a regular file")
        return fh.read() if limit is None else fh.read(limit)


def classify(path: Path, *, max_bytes: int) -> FileEntry:
    size = path.stat().st_size
    head = _read_regular(path, HEAD_BYTES)
    media_type = detect_media_type(path.name, head)
    if media_type is None:
        suffix = display_path(path.suffix or path.name)
        return FileEntry(path, UNSUPPORTED, size, f"unsupported file type: {suffix}")
    return FileEntry(path, media_type, size, size_problem(size, max_bytes=max_bytes))


def size_problem(size: int, *, max_bytes: int) -> str | None:
    """Why a document of `size` bytes is not ingested (empty, or over `max_bytes`), or None."""
    if size == 0:
        return "empty file (0 bytes)"
    if size > max_bytes:
        return f"file is too large: {size / 2**20:.1f} MiB, limit {max_bytes / 2**20:.0f} MiB"
    return None


def collect_files(
    specs: Iterable[str | Path], *, max_bytes: int, follow_symlinks: bool = False
) -> tuple[list[FileEntry], int]:
    """Files to ingest and the number skipped (unsupported files found by walking a directory).

    A file named explicitly is always kept: if it cannot be ingested, it is
    stored as failed with the reason, so the user sees why.
    """
    specs = list(specs)
    if not specs:
        raise ConfigError("no paths given")
    explicit, found = expand_paths(specs, follow_symlinks=follow_symlinks)
    entries = [classify(p, max_bytes=max_bytes) for p in explicit]
    skipped = 0
    for path in found:
        try:
            entry = classify(path, max_bytes=max_bytes)
        except (OSError, ConfigError) as err:  # vanished, unreadable or swapped since the walk
            _skip(path, str(err))
            skipped += 1
            continue
        if entry.media_type == UNSUPPORTED:
            skipped += 1
        else:
            entries.append(entry)
    if not entries:
        shown = ", ".join(display_path(s) for s in specs)
        raise ConfigError(f"no supported documents found in {shown} ({skipped} skipped)")
    unique = {e.path.resolve(): e for e in entries}
    return list(unique.values()), skipped


def read_document(entry: FileEntry) -> tuple[bytes, bytes]:
    """(content, sha256). A file with a problem keeps no content; its digest names the path instead."""
    if entry.problem is not None:
        return b"", hashlib.sha256(f"not ingested:{entry.source}:{entry.size}".encode()).digest()
    data = _read_regular(entry.path)
    return data, hashlib.sha256(data).digest()


def checked_metadata(metadata: Any) -> dict[str, Any] | None:
    """``metadata`` if Postgres jsonb can store it as given, else ``ValueError`` saying where not.

    jsonb refuses NaN and infinities, the NUL character and lone surrogates, and keys must be
    strings; checking first means nothing of the ingest is stored when one value is wrong.
    """
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be a dict")
    stack: list[tuple[str, Any]] = [("metadata", metadata)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"{where}: keys must be strings, got {key!r}")
                _check_string(f"{where} key", key)
                stack.append((f"{where}[{key!r}]", item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_string(where, value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: {value} cannot be stored (JSON has no NaN or infinity)")
        elif not (value is None or isinstance(value, (bool, int, float))):
            raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")
    return metadata


def _check_string(where: str, text: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{where}: contains a NUL character, which Postgres cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: contains a lone surrogate (not valid Unicode text)") from None
