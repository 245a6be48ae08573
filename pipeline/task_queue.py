"""The pipeline's view of the task queue, with no Celery in it.

The client only needs to wake workers and to ask for a rerank. The
implementation is found through the ``docpipe.task_queues`` entry point
(``celery`` → ``docpipe.workers.dispatch:CeleryTaskQueue``), so the library
never imports the worker package; tests can pass a fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Protocol

from docpipe.config import Settings
from docpipe.errors import ConfigError

ENTRY_POINT_GROUP = "docpipe.task_queues"


class TaskQueue(Protocol):
    def enqueue_parse(self, tasks: Sequence[Sequence[int]]) -> None:
        """Wake parse workers: one task per list of document ids (`docpipe.parse_batches`; ids only, bytes
        stay in Postgres)."""

    def enqueue_embed(self, model: str) -> None:
        """Wake an embed worker for pending chunks of `model`."""

    def rerank(self, query: str, chunk_ids: Sequence[int], *, timeout_s: float) -> list[tuple[int, float]]:
        """(chunk_id, score) best first, scored by the cross-encoder worker."""

    def close(self) -> None: ...


def load_task_queue(settings: Settings, name: str = "celery") -> TaskQueue:
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise ConfigError(f"no task queue named {name!r}; is docpipe installed (pip install -e .)?")
    factory = next(iter(found)).load()
    return factory(settings)
