"""Prometheus metrics of the workers, served over HTTP when `worker.metrics_port` is set.

Parse workers are process pools, so metrics use prometheus-client's
multiprocess mode: each pool process writes to files under
``PROMETHEUS_MULTIPROC_DIR`` and the worker's main process serves their sum.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server

log = logging.getLogger(__name__)

DOCUMENTS = Counter("docpipe_documents_total", "Documents parsed, by outcome", ["outcome"])
PARSE_SECONDS = Histogram(
    "docpipe_parse_seconds",
    "Wall seconds of one parse task: claim, parse, chunk and store a document, a batch of small ones, or a page range",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
CHUNKS_EMBEDDED = Counter("docpipe_chunks_embedded_total", "Chunks embedded and stored")
TOKENS_EMBEDDED = Counter("docpipe_tokens_embedded_total", "Tokens embedded (no padding)")
PADDED_TOKENS = Counter("docpipe_padded_tokens_total", "Token slots computed by forward passes, padding included")
FORWARD_SECONDS = Counter("docpipe_embed_forward_seconds_total", "Seconds the model spent in forward passes")
DRAIN_SECONDS = Counter("docpipe_embed_drain_seconds_total", "Wall seconds of embed drains")
RERANK_SECONDS = Histogram("docpipe_rerank_seconds", "Wall seconds to rerank one query's candidates")


def serve(port: int) -> None:
    """Serve every pool process's metrics on 127.0.0.1:`port` (called once, in the worker's main process)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        log.warning("PROMETHEUS_MULTIPROC_DIR is not set; metrics of pool processes would be lost")
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=os.environ.get("DOCPIPE_METRICS_ADDR", "127.0.0.1"), registry=registry)
    log.info("metrics on http://127.0.0.1:%d/metrics", port)


def process_exited(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
