"""The Celery implementation of `docpipe.task_queue.TaskQueue`."""

from __future__ import annotations

from collections.abc import Sequence

from docpipe.config import Settings
from docpipe.workers.queues import EMBED_TASK, PARSE_TASK, RERANK_TASK, ROUTES


class CeleryTaskQueue:
    def __init__(self, settings: Settings) -> None:
        from docpipe.workers.celery_app import make_app

        self.app = make_app(settings)

    def enqueue_parse(self, document_ids: Sequence[int]) -> None:
        with self.app.producer_or_acquire() as producer:  # one connection for the whole batch
            for doc_id in document_ids:
                self.app.send_task(PARSE_TASK, args=(int(doc_id),), producer=producer, **ROUTES[PARSE_TASK])

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
