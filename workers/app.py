"""The worker-side Celery app (`celery -A docpipe.workers.app worker`): settings read once, at start-up."""

from docpipe.workers.celery_app import make_app

app = make_app()
