"""Search on the real stack: `docpipe eval` on a BEIR folder made here, grouping, context headers, rerank errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docpipe.errors import ConfigError
from tests.e2e.test_pipeline import run_cli

TOPICS = {
    "d1": ("Volcanic eruptions", "Magma rises through the crust and erupts as lava, ash and volcanic gas."),
    "d2": ("Honey bees", "Worker bees collect nectar and pollen; the colony turns nectar into honey."),
    "d3": ("Tidal forces", "The moon's gravity raises tides in the oceans twice a day."),
    "d4": ("Sourdough bread", "A starter of wild yeast and lactobacilli leavens sourdough bread."),
}
QUERIES = {"q1": "lava and ash erupting", "q2": "how do bees make honey", "q3": "what causes ocean tides"}


def make_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    rows = [{"_id": i, "title": t, "text": x} for i, (t, x) in TOPICS.items()]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": q, "text": t}) for q, t in QUERIES.items()))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")
    return root


def test_eval_prints_figures_per_mode(stack, tmp_path: Path) -> None:
    root = make_beir(tmp_path / "tiny-beir")
    result = run_cli(stack, "eval", str(root), "--json", "--collection", "tiny-beir")
    report = json.loads(result.stdout)
    by_mode = {r["mode"]: r for r in report["results"]}
    assert set(by_mode) == {"hybrid", "vector", "text"}
    for figures in by_mode.values():
        assert figures["queries"] == 3
        assert figures["recall_at_100"] == 1.0  # four documents: every one is a candidate
        assert 0 < figures["p50_ms"] <= figures["p95_ms"]
    assert by_mode["text"]["ndcg_at_10"] == 1.0  # each query shares stemmed words with its document only
    assert by_mode["hybrid"]["ndcg_at_10"] == 1.0
    again = json.loads(
        run_cli(stack, "eval", str(root), "--json", "--collection", "tiny-beir", "--modes", "text").stdout
    )
    assert [r["mode"] for r in again["results"]] == ["text"]  # reuses the collection: same bytes are no-ops


def long_markdown(title: str, sections: int) -> bytes:
    body = [f"# {title}\n"]
    for s in range(sections):
        sentences = " ".join(f"Observation {s}.{i} concerns the {title.lower()} study in detail." for i in range(40))
        body.append(f"## Part {s}\n\n{sentences}\n")
    return "\n".join(body).encode()


@pytest.fixture(scope="module")
def long_docs(client):
    docs = [(f"long-{n}", long_markdown(t, 3), "text/markdown") for n, t in enumerate(["Glacier", "Coral"])]
    job = client.ingest_bytes(docs, collection="e2e-long")
    assert job.wait(timeout_s=600) == {"ready": 2}
    return docs


def test_chunks_carry_title_and_heading_as_context(client, long_docs) -> None:
    hits = client.search("Part 2 observation glacier", collection="e2e-long", k=20, mode="text")
    deep = [h for h in hits if h.source == "long-0" and h.heading_path[-1:] == ["Part 2"]]
    assert deep and all(h.context.startswith("Glacier") for h in deep)
    assert all("Glacier >" not in h.text for h in deep)  # the page's text is not rewritten


def test_group_by_document_returns_each_document_once(client, long_docs) -> None:
    chunks = client.search("observation study", collection="e2e-long", k=10)
    assert len({h.document_id for h in chunks}) < len(chunks)  # several chunks per document
    grouped = client.search("observation study", collection="e2e-long", k=10, group_by="document")
    assert sorted(h.source for h in grouped) == ["long-0", "long-1"]
    assert [h.score for h in grouped] == sorted((h.score for h in grouped), reverse=True)  # documents' fused scores
    best_chunk = {}
    for h in chunks:
        best_chunk.setdefault(h.document_id, h.chunk_id)
    assert all(best_chunk.get(h.document_id, h.chunk_id) == h.chunk_id for h in grouped)  # shown by its best chunk


class UnreachableReranker:
    """The error a worker reports when the cross-encoder's weights are not on this machine."""

    def rerank(self, query, chunk_ids, *, timeout_s):
        raise ConfigError("model 'cross-encoder/ms-marco-MiniLM-L-6-v2' could not be downloaded from the hub")

    def close(self) -> None:
        pass


def test_rerank_without_a_cross_encoder_is_an_error_naming_the_setting(stack, long_docs) -> None:
    from docpipe.client import Client

    with Client(stack.database_url, stack.redis_url, settings=stack.settings, task_queue=UnreachableReranker()) as c:
        assert c.search("glacier", collection="e2e-long", k=3)  # without rerank: fine
        with pytest.raises(ConfigError, match="DOCPIPE_RERANK__MODEL"):
            c.search("glacier", collection="e2e-long", k=3, rerank=True)
