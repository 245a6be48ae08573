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

ROUTES = {
    PARSE_TASK: {"queue": PARSE_QUEUE},
    PARSE_BATCH_TASK: {"queue": PARSE_QUEUE},
    PARSE_PART_TASK: {"queue": PARSE_QUEUE},
    SWEEP_TASK: {"queue": PARSE_QUEUE},
    EMBED_TASK: {"queue": EMBED_QUEUE},
    RERANK_TASK: {"queue": RERANK_QUEUE},
}
