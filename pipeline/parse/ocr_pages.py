"""Render and read pages in a forked helper, each page under a wall-time limit.

MuPDF's ``get_pixmap`` can run for minutes on some pages and an onnxruntime forward pass cannot
be interrupted, so a page is rendered and read in a child forked from the parser: if a page
overruns ``page_timeout_s`` the helper is killed, the page is reported as skipped, and a fresh
helper carries on with the next page. The helper inherits the open document (no bytes copied),
loads the OCR models itself (after the fork, so onnxruntime's thread pool is its own), dies with
the parser (``PR_SET_PDEATHSIG``) and streams one JSON frame per page back over a pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from docpipe.parse.protocol import HEADER, encode_json, frame, write_all

if TYPE_CHECKING:
    import numpy as np

    from docpipe.config import OcrConfig

LOAD_ALLOWANCE_S = 30.0  # wall seconds for a fresh helper to load the models and say it is ready
_PR_SET_PDEATHSIG = 1  # prctl option: signal this process when its parent exits


@dataclass(frozen=True, slots=True)
class PageText:
    """What OCR made of one page: blocks as (text, confidence), or why it has none."""

    page: int  # 1-based
    blocks: list[tuple[str, float]]
    error: str | None = None


Renderer = Callable[[int], "np.ndarray"]  # 1-based page number -> RGB image (height x width x 3, uint8)


def _die_with_parent() -> None:
    with contextlib.suppress(AttributeError, OSError):  # not Linux: the helper's own alarm still bounds it
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _helper(write_fd: int, render: Renderer, pages: Sequence[int], config: OcrConfig) -> None:
    """Body of the forked helper: read each page and send its frame; never returns."""
    code = 0
    try:
        _die_with_parent()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(int(LOAD_ALLOWANCE_S + config.page_timeout_s * len(pages)) + 1)
        from docpipe.parse.ocr import OcrEngine

        try:
            engine = OcrEngine(config)
        except Exception as err:  # e.g. OpenCV without libGL: say so rather than crash
            write_all(write_fd, frame(encode_json({"ready": False, "error": f"{type(err).__name__}: {err}"[:300]})))
            raise
        write_all(write_fd, frame(encode_json({"ready": True})))
        for page in pages:
            try:
                blocks = [(b.text, b.confidence) for b in engine.read(render(page))]
                reply: dict = {"page": page, "blocks": blocks}
            except MemoryError:
                reply = {"page": page, "error": "out of memory"}
            except Exception as err:
                reply = {"page": page, "error": f"{type(err).__name__}: {err}"[:300]}
            write_all(write_fd, frame(encode_json(reply)))
    except BaseException:
        code = 1
    finally:
        os._exit(code)


class _Helper:
    """The parent's end of one forked helper."""

    def __init__(self, render: Renderer, pages: Sequence[int], config: OcrConfig) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _helper(write_fd, render, pages, config)
        os.close(write_fd)
        self.pid, self.fd = pid, read_fd
        self._buf = bytearray()

    def next_reply(self, deadline: float) -> dict | str:
        """The next page's reply, or why there is none: "timed out" or "crashed" (the helper died)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            if len(self._buf) >= HEADER.size:
                (size,) = HEADER.unpack(self._buf[: HEADER.size])
                if len(self._buf) >= HEADER.size + size:
                    payload = bytes(self._buf[HEADER.size : HEADER.size + size])
                    del self._buf[: HEADER.size + size]
                    return json.loads(payload)
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return "timed out"
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return "crashed"
            self._buf += chunk

    def close(self) -> None:
        """Kill and reap the helper."""
        os.close(self.fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def read_pages(render: Renderer, pages: Sequence[int], config: OcrConfig) -> Iterator[PageText]:
    """OCR ``pages`` in order, each within ``config.page_timeout_s``; a page that overruns or
    crashes the helper comes back with an ``error`` and the next page gets a fresh helper."""
    todo = list(pages)
    while todo:
        helper = _Helper(render, todo, config)
        try:
            ready = helper.next_reply(time.monotonic() + LOAD_ALLOWANCE_S)
            if not isinstance(ready, dict) or not ready.get("ready"):
                reason = f"OCR engine failed to start ({ready if isinstance(ready, str) else ready.get('error')})"
                yield from (PageText(page, [], f"page {page}: {reason}") for page in todo)
                return
            while todo:
                page = todo[0]
                reply = helper.next_reply(time.monotonic() + config.page_timeout_s)
                todo.pop(0)
                if isinstance(reply, str):
                    limit = f" after {config.page_timeout_s:g} s" if reply == "timed out" else ""
                    yield PageText(page, [], f"OCR of page {page} {reply}{limit}")
                    break
                blocks = [(str(text), float(conf)) for text, conf in reply.get("blocks", [])]
                yield PageText(page, blocks, reply.get("error"))
        finally:
            helper.close()
