"""The embedded stack the end-to-end measurements share: servers, workers, a client, a tiny reranker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from docpipe.bench.common import minilm_dir
from docpipe.bench.random_models import build_random_cross_encoder
from docpipe.config import Settings


def bench_settings(
    data_dir: Path, *, model_cache: Path | None = None, reranker: Path | None = None, ocr_mode: str | None = None
) -> Settings:
    """The user's settings (environment) with an embedded stack in `data_dir` and the given reranker.

    The model cache stays the user's, so ONNX exports and the `auto` backend decision are reused.
    `ocr_mode` ("off": the text layer only) replaces the user's OCR mode.
    """
    base = Settings()
    updates: dict[str, object] = {
        "data_dir": data_dir,
        "model_cache": model_cache or base.model_cache_dir,
        "database_url": None,
        "redis_url": None,
    }
    if reranker is not None:
        updates["rerank"] = base.rerank.model_copy(update={"model": str(reranker)})
    if ocr_mode is not None:
        updates["ocr"] = base.ocr.model_copy(update={"mode": ocr_mode})
    return base.model_copy(update=updates)


@dataclass
class RunningStack:
    stack: object  # docpipe.stack.Stack
    client: object  # docpipe.Client
    settings: Settings

    def worker_pids(self) -> dict[str, int]:
        return {w.name: w.proc.pid for w in self.stack.workers if w.proc is not None}

    def log_path(self, worker: str) -> Path:
        return self.stack.log_dir / f"{worker}.log"

    @cached_property
    def document_embedder(self):
        """The embedder the embed worker runs (the chunk backend; `client.embedder` is the query one)."""
        from docpipe.embed import load_model_embedder

        return load_model_embedder(self.settings, self.settings.embed.model)


@contextmanager
def running_stack(
    work_dir: Path, *, model_cache: Path | None = None, ocr_mode: str | None = None
) -> Iterator[RunningStack]:
    """Postgres, Redis and the Celery workers as children of this process, stopped on exit."""
    from docpipe.client import Client
    from docpipe.stack import Stack

    reranker = build_random_cross_encoder(work_dir / "tiny-cross-encoder", minilm_dir())
    settings = bench_settings(work_dir / "stack", model_cache=model_cache, reranker=reranker, ocr_mode=ocr_mode)
    with (
        Stack(settings, redis_persist=False) as stack,
        Client(stack.database_url, stack.redis_url, settings=stack.settings) as client,
    ):
        yield RunningStack(stack, client, stack.settings)
