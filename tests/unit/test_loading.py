"""Hostile folders: symlinks out, special files, symlink loops, non-UTF-8 names, bad metadata."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest

from docpipe.errors import ConfigError
from docpipe.loading import checked_metadata, collect_files, expand_paths, read_document

MAX = 1 << 20


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with two real notes, a secret outside it and a symlink to that secret."""
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# A\n\nalpha")
    (root / "sub" / "b.txt").write_text("beta")
    outside = tmp_path / "secret.txt"
    outside.write_text("private key material")
    (root / "leak.txt").symlink_to(outside)
    (root / "inside.txt").symlink_to(root / "a.md")  # stays in the folder: followed
    return root


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_symlinks_out_of_the_folder_are_not_followed_unless_asked(folder: Path) -> None:
    _, found = expand_paths([folder])
    assert names(found) == ["a.md", "inside.txt", "b.txt"]
    _, followed = expand_paths([folder], follow_symlinks=True)
    assert "leak.txt" in names(followed)
    entries, _ = collect_files([folder], max_bytes=MAX)
    assert all(b"private" not in read_document(e)[0] for e in entries)


@pytest.mark.timeout(20)
def test_fifo_socket_are_skipped_and_a_named_fifo_is_a_clear_error(folder: Path, tmp_path: Path) -> None:
    fifo = folder / "pipe.txt"
    os.mkfifo(fifo)  # opening it for reading would block forever
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock.md"))
        entries, _ = collect_files([folder], max_bytes=MAX)
        assert sorted(e.path.resolve().name for e in entries) == ["a.md", "b.txt"]  # inside.txt is a.md
        with pytest.raises(ConfigError, match="FIFO, not a regular file"):
            collect_files([fifo], max_bytes=MAX)
        with pytest.raises(ConfigError, match="socket, not a regular file"):
            collect_files([folder / "sock.md"], max_bytes=MAX)
    with pytest.raises(ConfigError, match="device, not a regular file"):
        collect_files(["/dev/zero"], max_bytes=MAX)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("follow", [False, True])
def test_globs_and_walks_terminate_on_symlink_loops(folder: Path, follow: bool) -> None:
    for i in range(3):  # three loops per level: a following glob would visit 3**40 paths
        (folder / "sub" / f"loop{i}").symlink_to(folder)
    _, found = expand_paths([f"{folder}/**/*.txt"], follow_symlinks=follow)
    assert "b.txt" in names(found)
    _, found = expand_paths([folder], follow_symlinks=follow)
    assert "b.txt" in names(found)


def test_glob_patterns_match_like_the_shell(folder: Path) -> None:
    assert names(expand_paths([f"{folder}/*.md"])[1]) == ["a.md"]
    assert names(expand_paths([f"{folder}/**/b.t?t"])[1]) == ["b.txt"]
    assert names(expand_paths([f"{folder}/s*"])[1]) == ["b.txt"]  # a matched folder brings its files
    assert expand_paths([f"{folder}/nothing-*"])[1] == []


def test_a_non_utf8_file_name_gets_an_escaped_key(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.txt"
    with open(raw, "wb") as fh:
        fh.write(b"latin-1 named file")
    (tmp_path / "ok.txt").write_text("fine")
    entries, _ = collect_files([tmp_path], max_bytes=MAX)
    keys = sorted(e.source for e in entries)
    assert keys[0].endswith("/caf\\xe9-\\xff.txt") and keys[1].endswith("/ok.txt")
    for key in keys:
        key.encode("utf-8")  # storable
    assert {read_document(e)[0] for e in entries} == {b"latin-1 named file", b"fine"}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"score": math.nan}, "NaN"),
        ({"a": [1, {"b": math.inf}]}, "infinity"),
        ({"note": "nul\x00inside"}, "NUL"),
        ({"k\x00": 1}, "NUL"),
        ({"s": "lone \ud800"}, "lone surrogate"),
        ({1: "int key"}, "keys must be strings"),
        ({"obj": object()}, "not a JSON value"),
        (["not", "a", "dict"], "must be a dict"),
    ],
)
def test_metadata_jsonb_cannot_store_is_refused(metadata: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        checked_metadata(metadata)


def test_good_metadata_passes_unchanged() -> None:
    metadata = {"a": [1, 2.5, True, None, "é"], "b": {"c": "d"}}
    assert checked_metadata(metadata) is metadata
