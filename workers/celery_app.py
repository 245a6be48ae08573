"""Building the Celery app from settings; clients and workers each build their own.

At-least-once delivery plus idempotent tasks: the database is the truth and a
message is only a wake-up call, so a lost, duplicated or replayed message
changes nothing.
"""

from __future__ import annotations

from celery import Celery

from docpipe.config import Settings
from docpipe.db import resolve_redis_url
from docpipe.workers.queues import PRIORITY_STEPS, ROUTES, SWEEP_TASK


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    url = resolve_redis_url(settings)
    w = settings.worker
    app = Celery("docpipe", broker=url, backend=url, include=["docpipe.workers.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # a pickle message is refused
        result_accept_content=["json"],
        task_acks_late=True,  # a message leaves the broker only when its task finished
        task_reject_on_worker_lost=True,  # ...or goes back if the worker died under it
        worker_prefetch_multiplier=1,  # heavy tasks: no hoarding
        task_soft_time_limit=w.task_soft_time_limit_s,
        task_time_limit=w.task_time_limit_s,
        broker_transport_options={
            # Must exceed the hard time limit, or Redis redelivers running tasks (celery#5935).
            "visibility_timeout": 2 * w.task_time_limit_s + 60,
            "priority_steps": PRIORITY_STEPS,
        },
        result_expires=3600,
        task_routes=ROUTES,
        task_default_queue="parse",
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        beat_schedule={"sweep": {"task": SWEEP_TASK, "schedule": float(w.sweep_interval_s)}},
    )
    app.settings = settings  # type: ignore[attr-defined]
    return app
