"""Run the parsers in a long-lived child process with a wall-time and an address-space limit.

The child is a plain ``subprocess`` (Celery's prefork children are daemonic and may not use
``multiprocessing``), started lazily and again after it crashes, times out or runs out of
memory, so its imports (~1.8 s of CPU) are paid once per worker rather than once per document.
It is replaced when its heap has grown (``parse.recycle_mb`` resident), not after a fixed count of
documents: thousands of small text files grow nothing, and each restart would cost those seconds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from docpipe.config import OcrConfig, ParseLimits
from docpipe.errors import ParserCrashed, TooLarge
from docpipe.parse.protocol import (
    HEADER,
    OUT_OF_MEMORY,
    READ_CHUNK,
    document_from_json,
    encode_json,
    error_from_reply,
    frame,
)
from docpipe.types import ParsedDocument

START_TIMEOUT_S = 60.0  # wall seconds for a child to import its parsers and report ready
STOP_TIMEOUT_S = 5.0  # wall seconds a closing child gets to exit before it is killed
RECYCLE_AFTER = 100_000  # documents per child before a fresh one, whatever its size (a backstop)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096  # /proc/<pid>/statm counts pages
# numpy comes in with pymupdf; parsing needs no BLAS threads, each of which costs address space.
_CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _without_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment minus database and broker URLs and anything named like a secret: a parser
    exploited by a hostile document finds no credentials to use."""
    secret = ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "PASSWORD", "SECRET", "TOKEN", "PGPASS")
    return {key: value for key, value in environ.items() if not any(part in key.upper() for part in secret)}


@dataclass(frozen=True)
class StoredBytes:
    """A stored document's bytes, named by `key` and loaded only when the sandbox child does not hold
    them yet: the page ranges of a split document cross the database and the pipe once per child,
    not once per range."""

    key: str
    load: Callable[[], bytes]


class _Timeout(Exception):
    """The child did not answer before the deadline."""


class _Died(Exception):
    """The child closed its pipes: it exited or was killed."""


def _stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """End ``proc`` and reap it: close its input, wait ``grace_s`` seconds, then SIGKILL."""
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Child:
    """One child process and deadline-bounded framed I/O with it."""

    def __init__(self, limits: ParseLimits, env: Mapping[str, str]) -> None:
        self.memory_mb = limits.memory_mb
        self.owner_pid = os.getpid()
        self.documents = 0
        self.held: str | None = None  # key of the StoredBytes the child keeps from its last request
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "docpipe.parse.child", "--memory-mb", str(limits.memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out, self._in = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        os.set_blocking(self._in, False)
        self._finalizer = weakref.finalize(self, _stop, self.proc, 0.0)  # at GC or interpreter exit

    def request(self, header: dict[str, Any], data: bytes, deadline: float) -> dict[str, Any]:
        """Send one request and return the child's JSON reply; raises _Timeout or _Died."""
        self._send(frame(encode_json(header)) + HEADER.pack(len(data)), deadline)
        self._send(data, deadline)
        return self.receive(deadline)

    def receive(self, deadline: float) -> dict[str, Any]:
        (size,) = HEADER.unpack(self._recv_exact(HEADER.size, deadline))
        return json.loads(self._recv_exact(size, deadline))

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        poller = select.poll()
        poller.register(fd, event)
        while not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            if time.monotonic() >= deadline:
                raise _Timeout

    def _send(self, payload: bytes, deadline: float) -> None:
        view = memoryview(payload)
        while view:
            self._wait(self._out, select.POLLOUT, deadline)
            try:
                view = view[os.write(self._out, view) :]
            except BlockingIOError:
                continue
            except BrokenPipeError as err:
                raise _Died from err

    def _recv_exact(self, size: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            self._wait(self._in, select.POLLIN, deadline)
            try:
                chunk = os.read(self._in, min(size - len(buf), READ_CHUNK))
            except BlockingIOError:
                continue
            if not chunk:
                raise _Died
            buf += chunk
        return bytes(buf)

    def resident_mb(self) -> float:
        """The child's resident memory, MiB (0 where /proc is missing: only the count recycles it)."""
        try:
            pages = int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return 0.0
        return pages * _PAGE_BYTES / 2**20

    def exit_reason(self) -> str:
        """Why the child is gone, e.g. "SIGSEGV" or "exit status 1" (reaps it first)."""
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # pipes closed but still running: make sure it ends
            self.stop(grace_s=0.0)
            code = self.proc.returncode
        if code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return f"signal {-code}"
        return f"exit status {code}"

    def stop(self, grace_s: float) -> None:
        self._finalizer.detach()
        _stop(self.proc, grace_s)

    def abandon(self) -> None:
        """Forget a child inherited through fork(): it belongs to the parent process."""
        self._finalizer.detach()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _guarded(child: _Child, call: Callable[[], dict[str, Any]], *, timed_out: str, died: str) -> dict[str, Any]:
    """``call()``'s reply from ``child``; if the child hangs, dies, garbles or is interrupted
    (e.g. by a Celery soft time limit, leaving the pipe out of step), stop and reap it."""
    try:
        return call()
    except _Timeout:
        child.stop(grace_s=0.0)
        raise ParserCrashed(timed_out) from None
    except _Died:
        reason = child.exit_reason()
        child.stop(grace_s=0.0)
        raise ParserCrashed(f"{died} ({reason})") from None
    except ValueError:  # not JSON: something else wrote to the protocol pipe
        child.stop(grace_s=0.0)
        raise ParserCrashed("parser sent a malformed reply") from None
    except BaseException:
        child.stop(grace_s=0.0)
        raise


class SandboxedParser:
    """Parses documents in a child process that may crash, hang or run out of memory safely.

    Use it from one thread at a time (calls are serialised by a lock, so concurrent calls just
    wait); for parallel parsing give each thread or process its own instance. A crash, timeout
    or out-of-memory kills and reaps the child, raises ``ParserCrashed``, and the next call starts
    a fresh one. Errors from ``docpipe.errors`` raised in the child come back as the same class.
    """

    def __init__(
        self,
        limits: ParseLimits,
        *,
        env: Mapping[str, str] | None = None,
        recycle_after: int = RECYCLE_AFTER,
        ocr: OcrConfig | None = None,
    ) -> None:
        """``env``: extra environment variables for the child (the tests enable fault hooks);
        ``ocr``: OCR settings (None: scanned pages and images yield no text)."""
        self.limits = limits
        self.ocr = ocr if ocr is not None and ocr.mode != "off" else None
        self.timeout_s = limits.timeout_s + (self.ocr.request_allowance_s if self.ocr else 0.0)
        self._env = {**_without_credentials(os.environ), **_CHILD_ENV, **(env or {})}
        self._recycle_after = recycle_after
        self._lock = threading.Lock()
        self._child: _Child | None = None

    def parse(self, data: bytes | StoredBytes, media_type: str, *, ocr_budget: int | None = None) -> ParsedDocument:
        """Parse ``data`` of ``media_type`` within ``limits``; raises a ``DocpipeError``.

        ``StoredBytes`` stay in the child after the request, so the next request with the same key
        sends and loads nothing (one document's bytes are kept; any other request drops them).
        ``ocr_budget`` (pages): a PDF range stops before OCR'ing more pages (``parsed_to`` says where)."""
        if isinstance(data, bytes):
            self._check_size(data)
        header = {
            "media_type": media_type,
            "max_pages": self.limits.max_pages,
            "max_chars": self.limits.max_chars,  # a .docx stops there (its text can dwarf its file)
            "timeout_s": self.timeout_s,
            "ocr": self.ocr.model_dump() if self.ocr else None,
            "ocr_budget": ocr_budget,
        }
        with self._lock:
            reply = self._exchange(header, data)
        if "error" in reply:
            raise error_from_reply(reply["error"], reply.get("message", ""))
        doc = document_from_json(reply["ok"])
        chars = sum(len(block.text) for block in doc.blocks)
        if chars > self.limits.max_chars:  # what the parser produced: a zip bomb or a text flood
            raise TooLarge(
                f"document produced {chars} characters of text, more than the limit of "
                f"{self.limits.max_chars} (parse.max_chars)"
            )
        return doc

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.limits.max_bytes:
            raise TooLarge(f"document is {len(data)} bytes, more than the limit of {self.limits.max_bytes}")

    def _exchange(self, header: dict[str, Any], data: bytes | StoredBytes) -> dict[str, Any]:
        """One request/reply with the child; every way the child can fail ends it."""
        child = self._ready_child()
        key = data.key if isinstance(data, StoredBytes) else None
        if key is not None and child.held == key:
            header, payload = {**header, "held": key}, b""
        else:
            payload = data if key is None else data.load()
            self._check_size(payload)
            header = {**header, "hold": key}
        child.held = None
        reply = _guarded(
            child,
            lambda: child.request(header, payload, time.monotonic() + self.timeout_s),
            timed_out=f"parser timed out after {self.timeout_s:g} s",
            died="parser crashed",
        )
        child.held = key
        child.documents += 1
        if reply.get("error") == OUT_OF_MEMORY:
            self._discard(grace_s=STOP_TIMEOUT_S)
            raise ParserCrashed(f"parser ran out of memory (limit {self.limits.memory_mb} MiB)")
        if child.documents >= self._recycle_after or child.resident_mb() > self.limits.recycle_mb:
            self._discard(grace_s=STOP_TIMEOUT_S)
        return reply

    @property
    def child_pid(self) -> int | None:
        """The running child's process id, or None before the first parse or after a crash."""
        return self._child.proc.pid if self._child and self._child.proc.poll() is None else None

    def close(self) -> None:
        """Stop the child (if any) and reap it; the parser starts a new one if used again."""
        with self._lock:
            self._discard(grace_s=STOP_TIMEOUT_S)

    def __enter__(self) -> SandboxedParser:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _ready_child(self) -> _Child:
        if self._child is not None and self._child.owner_pid != os.getpid():
            self._child.abandon()  # we are a fork of the process that started it
            self._child = None
        if self._child is not None and self._child.proc.poll() is not None:
            self._discard(grace_s=0.0)  # stopped after a failure, or died between documents
        if self._child is None:
            child = _Child(self.limits, self._env)
            ready = _guarded(
                child,
                lambda: child.receive(time.monotonic() + START_TIMEOUT_S),
                timed_out=f"parser did not start within {START_TIMEOUT_S:g} s",
                died="parser failed to start",
            )
            if "ready" not in ready:
                child.stop(grace_s=0.0)
                raise ParserCrashed(f"parser failed to start: unexpected reply {ready!r:.200}")
            self._child = child
        return self._child

    def _discard(self, grace_s: float) -> None:
        if self._child is not None:
            self._child.stop(grace_s)
            self._child = None
