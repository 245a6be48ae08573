"""One settings object, read once at start-up and passed down.

Environment variables use the ``DOCPIPE_`` prefix (nested with ``__``, e.g.
``DOCPIPE_EMBED__BACKEND=torch-bf16``); the standard ``DATABASE_URL`` and
``REDIS_URL`` are accepted as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

EmbedBackend = Literal[
    "auto", "torch-fp32", "torch-bf16", "torch-fp16", "onnx", "onnx-int8", "openvino", "openvino-bf16"
]
Device = Literal["auto", "cpu", "cuda"]


def default_data_dir() -> Path:
    """Where the embedded stack keeps Postgres data, the broker dump and model caches."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "docpipe"


def default_cache_dir() -> Path:
    """The machine-wide cache: ``$XDG_CACHE_HOME/docpipe``, else ``~/.cache/docpipe``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "docpipe"


class ParseLimits(BaseModel):
    """How documents are parsed: limits on one document's parse (enforced in a sandboxed child process),
    page ranges, and the batching of small documents."""

    max_bytes: int = 256 * 1024 * 1024  # bytes; larger files fail as too large at ingest
    max_pages: int = 10_000  # pages; longer PDFs fail as too large
    timeout_s: float = 120.0  # wall seconds for the whole parse
    memory_mb: int = 3072  # address-space limit of the parser child, MiB
    recycle_mb: int = 1024  # resident MiB of the parser child after a document above which a fresh one replaces it
    split_pages: int = 64  # PDFs longer than this many pages are parsed in ranges of it, in parallel tasks; 0: never
    max_chars: int = 32_000_000  # characters of text one parse may produce (~10,000 full pages); more fails
    max_chunks: int = 100_000  # chunks one document may produce; more fails as too large
    batch_documents: int = Field(default=32, ge=1)  # small documents per parse task (one claim, one write); 1: never
    batch_max_bytes: int = 256 * 1024  # bytes; documents up to this size share parse tasks (images never do)


class OcrConfig(BaseModel):
    """Reading text that is only in the pixels: scanned PDF pages and images (README, "OCR")."""

    mode: Literal["auto", "off", "force"] = "auto"  # auto: pages without a usable text layer; force: every page
    dpi: int = Field(default=200, ge=72, le=600)  # render resolution, dots per inch (10-pt text ~28 px high)
    page_timeout_s: float = Field(default=50.0, gt=0)  # wall seconds to render and read one page
    max_pages: int = Field(default=500, ge=0)  # only pages 1..max_pages of a document are OCR'd
    split_pages: int = Field(default=2, ge=1)  # scanned PDFs are parsed in ranges of this many pages (< timeout)
    threads: int = Field(default=1, ge=1)  # onnxruntime threads per parse process (parse processes run in parallel)
    device: Device = "auto"  # auto: onnxruntime's CUDA provider when installed (onnxruntime-gpu), else CPU

    @property
    def request_allowance_s(self) -> float:
        """Wall seconds a parse request gets on top of parse.timeout_s: a range of scans at the page limit."""
        return self.split_pages * self.page_timeout_s if self.mode != "off" else 0.0


class TokenChunker(BaseModel):
    """Token-aware chunking with the embedding model's own tokenizer."""

    implementation: Literal["token"] = "token"
    max_tokens: int = 256  # tokens per chunk, clipped to the model's max sequence length
    overlap_tokens: int = 32  # tokens repeated from the previous chunk


class EmbedConfig(BaseModel):
    """The embedding model and how it runs."""

    model: str = DEFAULT_MODEL  # Hugging Face id or local sentence-transformers directory
    backend: EmbedBackend = "auto"
    device: Device = "auto"
    max_batch_tokens: int = 65_536  # tokens claimed per batch from the database (sorted by length within it)
    micro_batch_tokens: int = 8_192  # padded tokens per forward pass on a GPU (halved on CUDA OOM)
    cpu_micro_batch_tokens: int = 2_048  # padded tokens per forward pass on a CPU: as fast per token, less padding
    bulk_load_chunks: int = 2_000  # pending chunks above which the HNSW index is dropped and rebuilt after; 0: never
    trust_remote_code: bool = False


class SearchConfig(BaseModel):
    """Query-side defaults. The text analysis and BM25 parameters are recorded per collection at creation.

    Fusion defaults were chosen on the SciFact train split (README, "Search quality").
    """

    text_config: str = "english"  # Postgres text search configuration: stop words + Snowball stemmer
    bm25_k1: float = 0.9  # BM25 term-frequency saturation
    bm25_b: float = 0.4  # BM25 length normalisation, 0..1
    # postings read per query term, highest impact first, before the best candidates' scores are completed;
    # 0: max(1000, 10 k); -1: every posting (exhaustive, slow on large collections)
    bm25_per_term: int = Field(default=0, ge=-1)
    fusion: Literal["zscore", "minmax", "rrf"] = "zscore"  # score fusion of z-scores or min-max, or rank fusion
    vector_weight: float = 0.5  # weight of the dense side in fusion (the keyword side gets 1 - weight)
    rrf_k: int = 60  # reciprocal-rank-fusion constant
    max_k: int = Field(default=1000, ge=1)  # hits one search may ask for; more is refused
    max_query_chars: int = Field(default=4096, ge=1)  # characters of one query; longer is refused
    candidates: int = 100  # chunks each side contributes to fusion, at least k


class RerankConfig(BaseModel):
    """The cross-encoder used when a search asks for reranking."""

    model: str = "cross-encoder/ms-marco-MiniLM-L-6-v2"  # Hugging Face id or local directory
    device: Device = "auto"
    max_length: int = 512  # tokens per (query, passage) pair
    candidates: int = Field(default=50, ge=1, le=1000)  # ANN candidates sent to the reranker (at most 1000)
    time_limit_s: float = Field(default=30.0, gt=0)  # wall seconds the rerank task may score one query
    trust_remote_code: bool = False


class WorkerConfig(BaseModel):
    """Leases, retries and time limits shared by the workers."""

    lease_s: int = 300  # seconds a claimed document or chunk stays leased
    max_attempts: int = Field(default=3, ge=1)  # claims of a document before it fails for good (see retry.py)
    retry_backoff_s: float = Field(default=2.0, gt=0)  # seconds before a task's first retry; doubles per retry
    retry_backoff_max_s: float = Field(default=120.0, gt=0)  # seconds: the longest wait between two retries
    task_soft_time_limit_s: int = 600  # a task is interrupted after this; claims it holds are renewed until then
    task_time_limit_s: int = 900  # a task's process is killed after this; its claims' leases then run out
    sweep_interval_s: int = 30  # how often the sweeper re-enqueues stale work
    requeue_after_s: int = 60  # seconds a queued document waits, parse queue empty, before its message counts as lost
    parse_concurrency: int = 0  # parse processes; 0 means one per core
    # niceness added to parse processes: on shared cores the embedder runs first, parsing fills its gaps (an
    # intra-op thread preempted by a parse process stalls every other thread at the next barrier)
    parse_nice: int = 19
    metrics_port: int = 0  # Prometheus /metrics on 127.0.0.1: parse worker on this port, embed worker +1; 0: off


class Settings(BaseSettings):
    """All of docpipe's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="DOCPIPE_", env_nested_delimiter="__", extra="ignore", populate_by_name=True
    )

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "DOCPIPE_DATABASE_URL")
    )
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "DOCPIPE_REDIS_URL"))
    data_dir: Path = Field(default_factory=default_data_dir)
    model_cache: Path | None = None  # models, ONNX exports, backend choices; default: default_cache_dir(), machine-wide
    default_collection: str = "default"

    parse: ParseLimits = ParseLimits()
    ocr: OcrConfig = OcrConfig()
    chunk: TokenChunker = TokenChunker()
    embed: EmbedConfig = EmbedConfig()
    search: SearchConfig = SearchConfig()
    rerank: RerankConfig = RerankConfig()
    worker: WorkerConfig = WorkerConfig()

    @model_validator(mode="after")
    def _leases_outlive_work(self) -> Settings:
        parse_s = self.parse.timeout_s + self.ocr.request_allowance_s
        if self.worker.lease_s <= parse_s:
            raise ValueError(
                f"worker.lease_s ({self.worker.lease_s} s) must exceed parse.timeout_s ({self.parse.timeout_s:g} s) "
                f"+ ocr.split_pages x ocr.page_timeout_s ({self.ocr.request_allowance_s:g} s), "
                "or a slow parse would be handed to a second worker"
            )
        w = self.worker
        if not parse_s < w.task_soft_time_limit_s < w.task_time_limit_s:
            raise ValueError(
                f"worker.task_soft_time_limit_s ({w.task_soft_time_limit_s} s) must lie between one parse request "
                f"({parse_s:g} s: parse.timeout_s + OCR allowance) and worker.task_time_limit_s "
                f"({w.task_time_limit_s} s), or Celery would stop a parse before the parser's own limit says why"
            )
        return self

    @property
    def model_cache_dir(self) -> Path:
        """Shared by every stack on the machine, so an export or a backend measurement happens once."""
        return self.model_cache or default_cache_dir()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce `settings` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(exclude={"database_url", "redis_url"}).items():
        if value is None:
            continue
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                if subvalue is not None:  # unset: the child's default, as here ("None" would not parse back)
                    env[f"DOCPIPE_{name.upper()}__{sub.upper()}"] = str(subvalue)
        else:
            env[f"DOCPIPE_{name.upper()}"] = str(value)
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    return env
