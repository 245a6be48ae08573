"""Queue and task names: the one place they are spelled."""

PARSE_QUEUE = "parse"  # CPU workers
EMBED_QUEUE = "embed"  # GPU (or fast-CPU) workers
RERANK_QUEUE = "rerank"  # query-time cross-encoder, beside the embedder

PARSE_TASK = "docpipe.parse"
PARSE_BATCH_TASK = "docpipe.parse_batch"  # small documents, several per task
PARSE_PART_TASK = "docpipe.parse_part"
EMBED_TASK = "docpipe.embed"
RERANK_TASK = "docpipe.rerank"
SWEEP_TASK = "docpipe.sweep"

# Redis keeps one list per priority step and serves them in order, 0 first (kombu's Redis transport).
PRIORITY_STEPS = [0, 3, 6, 9]
NEW_PRIORITY = 3  # a document not started yet
# The page ranges of a document already being parsed go first: its other parts wait, stored, for
# them, and its long ranges (scans to OCR) start early instead of ending the ingest.
STARTED_PRIORITY = 0

ROUTES = {  # sending options per task, applied by Celery's router and passed to `send_task`
    PARSE_TASK: {"queue": PARSE_QUEUE, "priority": NEW_PRIORITY},
    PARSE_BATCH_TASK: {"queue": PARSE_QUEUE, "priority": NEW_PRIORITY},
    PARSE_PART_TASK: {"queue": PARSE_QUEUE, "priority": STARTED_PRIORITY},
    SWEEP_TASK: {"queue": PARSE_QUEUE, "priority": STARTED_PRIORITY},
    EMBED_TASK: {"queue": EMBED_QUEUE},
    RERANK_TASK: {"queue": RERANK_QUEUE},
}
