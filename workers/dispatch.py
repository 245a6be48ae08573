"""The Celery implementation of `docpipe.task_queue.TaskQueue`."""

from __future__ import annotations

from collections.abc import Sequence

from docpipe.config import Settings
from docpipe.workers.queues import EMBED_TASK, PARSE_BATCH_TASK, PARSE_TASK, RERANK_TASK, ROUTES


class CeleryTaskQueue:
    def __init__(self, settings: Settings) -> None:
        from docpipe.workers.celery_app import make_app

        self.app = make_app(settings)

    def enqueue_parse(self, tasks: Sequence[Sequence[int]]) -> None:
        with self.app.producer_or_acquire() as producer:  # one connection for all the messages
            for ids in tasks:
                name, args = (
                    (PARSE_TASK, (int(ids[0]),)) if len(ids) == 1 else (PARSE_BATCH_TASK, ([int(i) for i in ids],))
                )
                self.app.send_task(name, args=args, producer=producer, **ROUTES[name])

    def enqueue_embed(self, model: str) -> None:
        self.app.send_task(EMBED_TASK, args=(model,), **ROUTES[EMBED_TASK])

    def rerank(self, query: str, chunk_ids: Sequence[int], *, timeout_s: float) -> list[tuple[int, float]]:
        result = self.app.send_task(RERANK_TASK, args=(query, [int(c) for c in chunk_ids]), **ROUTES[RERANK_TASK])
        try:
            pairs = result.get(timeout=timeout_s)
        finally:
            result.forget()
        return [(int(cid), float(score)) for cid, score in pairs]

    def close(self) -> None:
        self.app.close()
