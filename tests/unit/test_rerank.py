"""The cross-encoder reranker on a tiny random BERT: shapes, determinism, batching, order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from docpipe.bench.random_models import build_random_cross_encoder
from docpipe.config import RerankConfig
from docpipe.rerank import CrossEncoderReranker, Reranker, load_reranker

QUERY = "how do I rotate the database password?"
PASSAGES = [
    "Rotate the password with ALTER ROLE and update the secret in the vault.",
    "The cafeteria is open from eight to three.",
    "",
    "Passwords expire after ninety days. " * 40,  # longer than the model: truncated
    "Database credentials live in the secrets manager; rotation is automatic every month.",
    "rotate",
]


def tiny_cross_encoder(minilm_dir: Path, target: Path, *, num_labels: int) -> Path:
    """A randomly initialised 2-layer BERT classifier using MiniLM's tokenizer files."""
    return build_random_cross_encoder(target, minilm_dir, num_labels=num_labels, max_positions=128)


@pytest.fixture(scope="module")
def model_dir(minilm_dir, tmp_path_factory) -> Path:
    return tiny_cross_encoder(minilm_dir, tmp_path_factory.mktemp("rerank") / "tiny", num_labels=1)


@pytest.fixture(scope="module")
def reranker(model_dir) -> CrossEncoderReranker:
    return load_reranker(RerankConfig(model=str(model_dir), device="cpu"), cache_dir=model_dir.parent)


def test_scores_one_float_per_passage(reranker):
    assert isinstance(reranker, Reranker)
    scores = reranker.score(QUERY, PASSAGES)
    assert len(scores) == len(PASSAGES)
    assert all(isinstance(s, float) and np.isfinite(s) for s in scores)
    assert len(set(scores)) > 1
    assert reranker.score(QUERY, []) == []
    assert reranker.max_length == 128  # config asked for 512; the model has 128 positions


def test_deterministic(reranker):
    assert reranker.score(QUERY, PASSAGES) == reranker.score(QUERY, PASSAGES)


def test_batching_equals_one_by_one(model_dir, reranker):
    tiny_batches = CrossEncoderReranker(model_dir, batch_tokens=64)  # forces many micro-batches
    together = tiny_batches.score(QUERY, PASSAGES)
    alone = [reranker.score(QUERY, [p])[0] for p in PASSAGES]
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)


def test_scores_follow_input_order(reranker):
    forward = reranker.score(QUERY, PASSAGES)
    backward = reranker.score(QUERY, PASSAGES[::-1])
    np.testing.assert_allclose(backward[::-1], forward, rtol=1e-4, atol=1e-5)
    ranked = sorted(range(len(PASSAGES)), key=lambda i: -forward[i])
    assert sorted(ranked) == list(range(len(PASSAGES)))


def test_two_labels_give_probability_of_last_class(minilm_dir, tmp_path):
    import torch

    reranker = CrossEncoderReranker(tiny_cross_encoder(minilm_dir, tmp_path / "two", num_labels=2))
    scores = reranker.score(QUERY, PASSAGES[:3])
    features = reranker.tokenizer([QUERY], [PASSAGES[0]], return_tensors="pt")
    with torch.inference_mode():
        expected = reranker.model(**features).logits.softmax(-1)[0, -1].item()
    assert all(0.0 < s < 1.0 for s in scores)
    assert scores[0] == pytest.approx(expected, abs=1e-5)


def test_rejects_a_bare_string(reranker):
    with pytest.raises(TypeError):
        reranker.score(QUERY, "not a list")


def test_a_deadline_stops_scoring_between_micro_batches(model_dir):
    """The rerank task's time limit fires inside the call (Celery's threads pool ignores time limits)."""
    import time

    small = CrossEncoderReranker(str(model_dir), device="cpu", batch_tokens=64)
    texts = [f"passage number {i} about lighthouses and keepers" for i in range(40)]
    with pytest.raises(TimeoutError, match="time limit after scoring 0 of 40"):
        small.score("lighthouse", texts, deadline=time.monotonic() - 1)
    assert len(small.score("lighthouse", texts, deadline=time.monotonic() + 600)) == 40
