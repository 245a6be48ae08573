"""Per-process resources of a worker: engine, sandboxed parser, models. Built lazily after fork."""

from __future__ import annotations

import contextlib
import os
import threading
from functools import cached_property
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from docpipe.config import Settings
from docpipe.db import make_engine, make_sessionmaker, resolve_database_url
from docpipe.drain import DrainGate

AUTOGROUP = Path("/proc/self/autogroup")


def lower_cpu_priority(nice: int) -> None:
    """Add `nice` to this process's niceness, and give its session's autogroup the same niceness.

    Where the kernel groups CPU time by session (Linux autogroup, on by default in most
    distributions), a process's niceness only ranks it within its own session, and each worker
    runs in a session of its own: without the group's niceness, parse processes get as much CPU
    as the embedder.
    """
    os.nice(nice)
    with contextlib.suppress(OSError):  # no autogroup here (or not allowed): the niceness above is what there is
        AUTOGROUP.write_text(f"{nice}\n")


class WorkerContext:
    """Everything a task needs, created on first use in the process that uses it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self._gates: dict[str, DrainGate] = {}  # one drain of the embed queue per model and process
        self._model_lock = threading.Lock()
        self._embedders: dict[str, object] = {}

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(make_engine(resolve_database_url(self.settings)))

    @cached_property
    def parser(self):
        """The sandboxed parser; first use marks this as a parse process and lowers its priority.

        The embedder is the bottleneck by design: when both share CPU cores, parsing
        should fill the gaps, not slow the model (the sandbox child inherits the niceness).
        """
        from docpipe.parse import SandboxedParser

        if self.settings.worker.parse_nice > 0:
            lower_cpu_priority(self.settings.worker.parse_nice)
        return SandboxedParser(self.settings.parse, ocr=self.settings.ocr)

    def drain_gate(self, model: str) -> DrainGate:
        with self._model_lock:
            return self._gates.setdefault(model, DrainGate())

    def embedder(self, model: str):
        """The embedder for `model`, loaded once per process."""
        with self._model_lock:
            if model not in self._embedders:
                from docpipe.embed import load_model_embedder

                self._embedders[model] = load_model_embedder(self.settings, model)
            return self._embedders[model]

    @cached_property
    def reranker(self):
        from docpipe.rerank import load_reranker

        return load_reranker(self.settings.rerank, cache_dir=self.settings.model_cache_dir)


_context: WorkerContext | None = None


def get_context(settings: Settings) -> WorkerContext:
    """The context of this process (a forked child builds its own)."""
    global _context
    if _context is None or _context.pid != os.getpid():
        _context = WorkerContext(settings)
    return _context
