"""The sandbox child: ``python -m docpipe.parse.child --memory-mb N``.

Reads requests on fd 0 and writes replies on the fd that was stdout at start; fd 1 then points
at stderr, so anything a library prints cannot corrupt the protocol. Exits at end of input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import time
from typing import Any

from docpipe.config import OcrConfig
from docpipe.errors import DocpipeError
from docpipe.parse import parse_bytes, preload_parsers
from docpipe.parse.protocol import OUT_OF_MEMORY, document_to_json, encode_json, frame, read_frame, write_all

TEST_HOOKS_ENV = "DOCPIPE_SANDBOX_TEST_HOOKS"  # "1" enables the fault-injection media types below
CRASH_TYPE = "application/x-docpipe-test-crash"  # the child kills itself with SIGSEGV
HANG_TYPE = "application/x-docpipe-test-hang"  # the child sleeps forever
ALLOCATE_TYPE = "application/x-docpipe-test-allocate"  # the child allocates until MemoryError
PRINT_TYPE = "application/x-docpipe-test-print"  # prints to stdout, then parses as text/plain
_WATCHDOG_GRACE_S = 30  # seconds past the parent's timeout before an orphaned child kills itself
_ALLOCATE_STEP = 64 * 1024 * 1024  # bytes per allocation in the allocate hook


def _run_test_hook(media_type: str) -> str:
    """Fault injection for the sandbox tests, active only with ``DOCPIPE_SANDBOX_TEST_HOOKS=1``;
    returns the media type to parse the document as."""
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        return media_type
    if media_type == PRINT_TYPE:
        print("noise from print()")
        os.write(1, b"noise written to fd 1\n")
        return "text/plain"
    if media_type == CRASH_TYPE:
        os.kill(os.getpid(), signal.SIGSEGV)
    elif media_type == HANG_TYPE:
        while True:
            time.sleep(60)
    elif media_type == ALLOCATE_TYPE:
        hoard = []
        while True:
            hoard.append(bytes(_ALLOCATE_STEP))  # calloc: address space, no page touching
    return media_type


def handle(header: dict[str, Any], data: bytes) -> dict[str, Any]:
    """Parse one document; the reply says what came out or which error to raise."""
    media_type = str(header["media_type"])
    try:
        media_type = _run_test_hook(media_type)
        ocr = OcrConfig.model_validate(header["ocr"]) if header.get("ocr") else None
        doc = parse_bytes(
            data, media_type, max_pages=int(header["max_pages"]), ocr=ocr, ocr_budget=header.get("ocr_budget"),
            max_chars=header.get("max_chars"),
        )  # fmt: skip
    except DocpipeError as err:
        return {"error": type(err).__name__, "message": str(err)}
    except MemoryError:
        return {"error": OUT_OF_MEMORY, "message": ""}
    except Exception as err:
        return {"error": "CorruptDocument", "message": f"{type(err).__name__}: {err}"}
    return {"ok": document_to_json(doc)}


def _set_limits(memory_mb: int) -> None:
    """Cap this process's address space at ``memory_mb`` MiB (never above the inherited cap);
    no core files, so a crash cannot fill the disk with a multi-GiB dump."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def serve(requests: int, replies: int) -> None:
    """Answer requests until the parent closes its end."""
    held: tuple[str, bytes] | None = None  # (key, bytes) a request asked to keep for the next ones
    while (raw_header := read_frame(requests)) is not None:
        header = json.loads(raw_header)
        reuse = header.get("held")  # the key of the bytes kept from an earlier request, or None
        if reuse is None:
            held = None  # before reading new bytes: only one document is kept
        try:
            data = read_frame(requests) or b""
        except MemoryError:  # the document alone does not fit under the limit
            write_all(replies, frame(encode_json({"error": OUT_OF_MEMORY, "message": ""})))
            return
        if reuse is not None:
            if held is None or held[0] != reuse:  # the parent tracks what we hold: never here
                write_all(replies, frame(encode_json({"error": "ParserCrashed", "message": "bytes not held"})))
                return
            data = held[1]
        # Watchdog for an orphan: the parent kills us at timeout_s; SIGALRM's default action
        # ends a child whose parent died mid-document.
        signal.alarm(math.ceil(float(header["timeout_s"])) + _WATCHDOG_GRACE_S)
        reply = handle(header, data)
        if header.get("hold") is not None:
            held = (header["hold"], data)
        del data
        try:
            payload = encode_json(reply)
        except MemoryError:  # the parse fitted, its JSON did not
            reply = {"error": OUT_OF_MEMORY, "message": ""}
            payload = encode_json(reply)
        signal.alarm(0)
        write_all(replies, frame(payload))
        if reply.get("error") == OUT_OF_MEMORY:
            return  # the heap may be in a bad state; the parent starts a fresh child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docpipe.parse.child")
    parser.add_argument("--memory-mb", type=int, required=True, help="address-space limit, MiB")
    args = parser.parse_args(argv)
    replies = os.dup(1)  # the protocol's private copy of the pipe the parent reads
    os.dup2(2, 1)  # library prints now go to stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker; we stop at EOF
    _set_limits(args.memory_mb)
    preload_parsers()
    from docpipe.parse.pdf import silence_mupdf

    silence_mupdf()
    write_all(replies, frame(encode_json({"ready": os.getpid()})))
    serve(0, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
