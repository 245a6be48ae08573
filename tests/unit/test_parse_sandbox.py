"""SandboxedParser: the corpus's PDF classes, errors crossing the pipe, crashes, hangs, OOM."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from docpipe.config import ParseLimits
from docpipe.errors import (
    CorruptDocument,
    EncryptedDocument,
    ParserCrashed,
    PermanentError,
    TooLarge,
    UnsupportedType,
)
from docpipe.parse import SandboxedParser, StoredBytes
from docpipe.parse.child import ALLOCATE_TYPE, CRASH_TYPE, HANG_TYPE, PRINT_TYPE, TEST_HOOKS_ENV, handle
from docpipe.parse.media import DOCX, HTML, MARKDOWN, PDF
from docpipe.parse.protocol import error_from_reply

HOOK_TIMEOUT_S = 2.0  # per-document wall limit of the fault-injection parser
HOOK_MEMORY_MB = 1024  # address-space limit of the fault-injection parser


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxedParser]:
    with SandboxedParser(ParseLimits(timeout_s=30), env={TEST_HOOKS_ENV: ""}) as parser:
        yield parser


@pytest.fixture(scope="module")
def hooked() -> Iterator[SandboxedParser]:
    limits = ParseLimits(timeout_s=HOOK_TIMEOUT_S, memory_mb=HOOK_MEMORY_MB)
    with SandboxedParser(limits, env={TEST_HOOKS_ENV: "1"}) as parser:
        yield parser


def rows_of(manifest: list[dict[str, str]], *classes: str) -> list[dict[str, str]]:
    rows = [row for row in manifest if row["class"] in classes]
    assert rows, classes
    return rows


def is_reaped(pid: int) -> bool:
    """True when ``pid`` is gone: neither running nor a zombie waiting to be reaped."""
    return not Path(f"/proc/{pid}").exists()


def assert_still_works(parser: SandboxedParser) -> int:
    """Parse a small document and return the pid of the child that did it."""
    doc = parser.parse(b"# Still\n\nalive", MARKDOWN)
    assert [b.text for b in doc.blocks] == ["Still", "alive"]
    pid = parser.child_pid
    assert pid is not None
    return pid


# --- the corpus's PDF classes -----------------------------------------------------------------


def test_every_encrypted_pdf_needs_a_password(
    sandbox: SandboxedParser, corpus_dir: Path, manifest: list[dict[str, str]]
) -> None:
    for row in rows_of(manifest, "encrypted"):
        with pytest.raises(EncryptedDocument, match=r"^PDF is encrypted: password required$"):
            sandbox.parse((corpus_dir / row["file"]).read_bytes(), PDF)


def test_every_broken_pdf_fails_with_a_reason(
    sandbox: SandboxedParser, corpus_dir: Path, manifest: list[dict[str, str]]
) -> None:
    outcomes = {}
    for row in rows_of(manifest, "broken"):
        try:
            sandbox.parse((corpus_dir / row["file"]).read_bytes(), PDF)
        except PermanentError as err:
            outcomes[row["file"]] = err
        else:
            outcomes[row["file"]] = None
    parsed = [name for name, err in outcomes.items() if err is None]
    assert parsed == [], "broken files that parsed"
    for name, err in outcomes.items():
        assert not isinstance(err, ParserCrashed), (name, err)
        assert len(str(err)) > 10, (name, err)


def test_every_ok_pdf_parses(sandbox: SandboxedParser, corpus_dir: Path, manifest: list[dict[str, str]]) -> None:
    for row in rows_of(manifest, "ok_text", "ok_little_text"):
        doc = sandbox.parse((corpus_dir / row["file"]).read_bytes(), PDF)
        assert doc.page_count == int(row["pages"]), row["file"]
        if row["class"] == "ok_text":
            assert sum(len("".join(b.text.split())) for b in doc.blocks) >= 100, row["file"]


def test_slow_files_are_fast(sandbox: SandboxedParser, corpus_dir: Path, manifest: list[dict[str, str]]) -> None:
    slow = [row for row in manifest if "SLOW:" in row["note"]]
    assert slow
    for row in slow:
        started = time.monotonic()
        sandbox.parse((corpus_dir / row["file"]).read_bytes(), PDF)
        assert time.monotonic() - started < 5, row["file"]


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("readability__README.md", MARKDOWN), ("wikipedia.html", HTML), ("par-known-paragraphs.docx", DOCX)],
)
def test_other_formats_with_headings(sandbox: SandboxedParser, corpus_dir: Path, name: str, media_type: str) -> None:
    doc = sandbox.parse((corpus_dir / "other" / name).read_bytes(), media_type)
    assert any(b.is_heading for b in doc.blocks)
    assert any(b.heading_path and not b.is_heading for b in doc.blocks)


# --- errors cross the pipe as themselves ------------------------------------------------------


def test_errors_keep_class_and_message(sandbox: SandboxedParser) -> None:
    with pytest.raises(UnsupportedType, match=r"^unsupported media type: image/gif$"):
        sandbox.parse(b"GIF89a", "image/gif")
    with pytest.raises(CorruptDocument, match=r"^cannot open DOCX: "):
        sandbox.parse(b"PK\x03\x04 not really", DOCX)


def test_unknown_error_names_become_corrupt_document() -> None:
    err = error_from_reply("KeyError", "'x'")
    assert type(err) is CorruptDocument and str(err) == "KeyError: 'x'"
    assert type(error_from_reply("TooLarge", "big")) is TooLarge


def test_unexpected_exceptions_become_corrupt_document() -> None:
    reply = handle({"media_type": "text/plain", "max_pages": "many", "timeout_s": 1}, b"x")
    assert reply["error"] == "CorruptDocument"
    assert reply["message"].startswith("ValueError: invalid literal")


def test_too_many_bytes_is_refused_before_the_child() -> None:
    parser = SandboxedParser(ParseLimits(max_bytes=10))
    with pytest.raises(TooLarge, match="more than the limit of 10"):
        parser.parse(b"x" * 11, "text/plain")
    assert parser.child_pid is None


def test_hooks_are_off_without_the_env_var(sandbox: SandboxedParser) -> None:
    with pytest.raises(UnsupportedType):
        sandbox.parse(b"", CRASH_TYPE)


# --- faults: the child dies, hangs, runs out of memory -----------------------------------------


def test_segfault_is_reported_and_the_next_parse_works(hooked: SandboxedParser) -> None:
    pid = assert_still_works(hooked)
    with pytest.raises(ParserCrashed, match=r"^parser crashed \(SIGSEGV\)$"):
        hooked.parse(b"", CRASH_TYPE)
    assert is_reaped(pid)
    assert assert_still_works(hooked) != pid


def test_hang_times_out_and_the_next_parse_works(hooked: SandboxedParser) -> None:
    pid = assert_still_works(hooked)
    started = time.monotonic()
    with pytest.raises(ParserCrashed, match=rf"^parser timed out after {HOOK_TIMEOUT_S:g} s$"):
        hooked.parse(b"", HANG_TYPE)
    assert HOOK_TIMEOUT_S <= time.monotonic() - started < HOOK_TIMEOUT_S + 2
    assert is_reaped(pid)
    assert_still_works(hooked)


def test_memory_limit_and_the_next_parse_works(hooked: SandboxedParser) -> None:
    pid = assert_still_works(hooked)
    with pytest.raises(ParserCrashed, match=rf"^parser ran out of memory \(limit {HOOK_MEMORY_MB} MiB\)$"):
        hooked.parse(b"", ALLOCATE_TYPE)
    assert is_reaped(pid)
    assert_still_works(hooked)


def test_child_killed_between_documents_is_replaced(hooked: SandboxedParser) -> None:
    pid = assert_still_works(hooked)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:  # peek, not reap
        assert time.monotonic() < deadline, "the killed child did not die"
        time.sleep(0.01)
    assert assert_still_works(hooked) != pid  # the next document is not blamed for it
    assert is_reaped(pid)


class Interrupted(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded, raised by a signal handler mid-parse."""


def test_interrupted_parse_drops_the_child(hooked: SandboxedParser) -> None:
    pid = assert_still_works(hooked)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            hooked.parse(b"", HANG_TYPE)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert is_reaped(pid)  # a reply still in flight cannot be mistaken for the next one's
    assert_still_works(hooked)


def test_prints_on_stdout_do_not_break_the_protocol(hooked: SandboxedParser) -> None:
    doc = hooked.parse(b"payload text", PRINT_TYPE)  # the child prints, then parses
    assert [b.text for b in doc.blocks] == ["payload text"]
    assert_still_works(hooked)


def test_close_reaps_the_child_and_parser_restarts() -> None:
    with SandboxedParser(ParseLimits()) as parser:
        pid = assert_still_works(parser)
        parser.close()
        assert parser.child_pid is None
        assert is_reaped(pid)
        pid = assert_still_works(parser)
    assert is_reaped(pid)


def test_the_child_is_replaced_when_its_heap_has_grown_not_after_a_count() -> None:
    with SandboxedParser(ParseLimits()) as parser:  # small documents grow nothing: one child for all
        first = assert_still_works(parser)
        for _ in range(20):
            assert_still_works(parser)
        assert parser.child_pid == first
    with SandboxedParser(ParseLimits(recycle_mb=1)) as parser:  # every child is above 1 MiB resident
        for text in ("one", "two"):  # a fresh child for each, stopped right after its document
            assert [b.text for b in parser.parse(text.encode(), "text/plain").blocks] == [text]
            assert parser.child_pid is None


def test_stored_bytes_cross_the_pipe_once_per_child(hooked: SandboxedParser) -> None:
    loads: list[str] = []

    def stored(key: str, data: bytes) -> StoredBytes:
        return StoredBytes(key, lambda: loads.append(key) or data)

    note = b"# Kept\n\nbetween ranges"
    first = hooked.parse(stored("doc:1", note), MARKDOWN)
    again = hooked.parse(stored("doc:1", note), MARKDOWN)  # held by the child: nothing loaded or sent
    assert loads == ["doc:1"] and again.blocks == first.blocks
    hooked.parse(b"another document", "text/plain")  # drops what the child held
    hooked.parse(stored("doc:1", note), MARKDOWN)
    assert loads == ["doc:1", "doc:1"]
    with pytest.raises(ParserCrashed):
        hooked.parse(stored("doc:2", b"x"), CRASH_TYPE)
    assert hooked.parse(stored("doc:2", note), MARKDOWN).blocks == first.blocks  # a new child: loaded again
    assert loads == ["doc:1", "doc:1", "doc:2", "doc:2"]
    with pytest.raises(TooLarge):  # the size limit holds for bytes loaded on demand
        hooked.parse(stored("doc:3", b"x" * (hooked.limits.max_bytes + 1)), "text/plain")
