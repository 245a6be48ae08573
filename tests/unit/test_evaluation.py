"""BEIR loading and the metrics of `docpipe eval`, against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from docpipe.errors import ConfigError
from docpipe.evaluation import BeirSet, as_markdown, default_collection, evaluate, ndcg_at, recall_at


def test_ndcg_matches_a_hand_computation() -> None:
    relevant = {"a": 1, "b": 2}
    # ranking c, b, a: DCG = 2/log2(3) + 1/log2(4); ideal b, a: 2/log2(2) + 1/log2(3)
    want = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
    assert ndcg_at(["c", "b", "a"], relevant, 10) == pytest.approx(want)
    assert ndcg_at(["b", "a"], relevant, 10) == pytest.approx(1.0)
    assert ndcg_at(["x"] * 10 + ["a"], relevant, 10) == 0.0
    assert recall_at(["a", "x"], relevant, 100) == 0.5


def make_beir(root: Path, *, splits=("test",)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    docs = [{"_id": "d1", "title": "Cats", "text": "Cats purr."}, {"_id": "d2", "title": "", "text": "Dogs bark."}]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    queries = [{"_id": "q1", "text": "purring"}, {"_id": "q2", "text": "barking"}, {"_id": "q3", "text": "unjudged"}]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    for split in splits:
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return root


def test_beir_set_reads_corpus_queries_and_judgments(tmp_path: Path) -> None:
    beir = BeirSet.open(make_beir(tmp_path / "set"))
    assert beir.split == "test"
    assert list(beir.corpus()) == [("d1", "Cats", "Cats purr."), ("d2", "", "Dogs bark.")]
    assert beir.queries() == {"q1": "purring", "q2": "barking"}  # only judged queries
    assert beir.qrels() == {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert as_markdown("Cats", "Cats purr.") == b"# Cats\n\nCats purr.\n"
    assert as_markdown("", "Dogs bark.") == b"Dogs bark.\n"
    assert default_collection(tmp_path / "my set!") == "beir-my-set"


def test_beir_set_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"corpus\.jsonl is missing"):
        BeirSet.open(tmp_path)
    root = make_beir(tmp_path / "two", splits=("train", "dev"))
    with pytest.raises(ConfigError, match="choose a split"):
        BeirSet.open(root)
    assert BeirSet.open(root, "dev").split == "dev"


def test_evaluate_scores_each_query() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    result = evaluate("fake", lambda q: ["d1", "d2"], {"q1": "x", "q2": "y"}, qrels)
    assert result.queries == 2
    assert result.ndcg_at_10 == pytest.approx(round((1 + 1 / math.log2(3)) / 2, 4))
    assert result.recall_at_100 == 1.0
    assert result.per_query["q1"] == 1.0
