"""Search quality on a BEIR-layout folder, through the real pipeline: nDCG@10, Recall@100, latency per mode.

A BEIR folder holds `corpus.jsonl` ({"_id", "title", "text"}), `queries.jsonl`
({"_id", "text"}) and `qrels/<split>.tsv` (query-id, corpus-id, score, with a
header line). Each corpus entry is ingested as a Markdown document whose key is
its `_id` (the title as its heading), so the parse, chunk, embed and index
stages are the ones users get. Metrics follow BEIR: graded gains, log2
discount, averaged over the queries that have judgments.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from docpipe.errors import ConfigError

Qrels = dict[str, dict[str, int]]  # query id → corpus id → relevance grade
MARKDOWN = "text/markdown"


@dataclass(frozen=True)
class BeirSet:
    """One BEIR-layout dataset: where it is and which judgments to use."""

    root: Path
    split: str

    @classmethod
    def open(cls, root: Path, split: str | None = None) -> BeirSet:
        """The dataset at `root`; `split` defaults to test, else the only qrels file there is."""
        for name in ("corpus.jsonl", "queries.jsonl", "qrels"):
            if not (root / name).exists():
                raise ConfigError(f"{root} is not a BEIR folder: {name} is missing")
        splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        if split is None:
            split = "test" if "test" in splits else splits[0] if len(splits) == 1 else None
            if split is None:
                raise ConfigError(f"{root}: choose a split with --split ({', '.join(splits) or 'none found'})")
        if split not in splits:
            raise ConfigError(f"{root}: no qrels/{split}.tsv (found: {', '.join(splits) or 'none'})")
        return cls(root, split)

    def corpus(self) -> Iterator[tuple[str, str, str]]:
        """(id, title, text) per corpus entry."""
        with open(self.root / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    yield str(row["_id"]), row.get("title") or "", row.get("text") or ""

    def qrels(self) -> Qrels:
        out: Qrels = {}
        with open(self.root / "qrels" / f"{self.split}.tsv", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t")
            for row in reader:
                if len(row) < 3 or not row[2].strip().lstrip("-").isdigit():  # the header, blank lines
                    continue
                out.setdefault(row[0], {})[row[1]] = int(row[2])
        return out

    def queries(self, judged: Qrels | None = None) -> dict[str, str]:
        """Query id → text, for the queries that have judgments (`judged`, default this split's qrels)."""
        judged = self.qrels() if judged is None else judged
        out = {}
        with open(self.root / "queries.jsonl", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    if str(row["_id"]) in judged:
                        out[str(row["_id"])] = row["text"]
        return out


def as_markdown(title: str, text: str) -> bytes:
    """A corpus entry as the Markdown document that is ingested: the title as its heading."""
    title = " ".join(title.split())
    return (f"# {title}\n\n{text}\n" if title else f"{text}\n").encode()


def default_collection(root: Path) -> str:
    """A collection name for a dataset folder: 'beir-' and the folder's name, made valid."""
    return "beir-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", root.resolve().name).strip("-.") or "set")[:120]


def ndcg_at(ranking: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k with graded gains and log2 discount (BEIR, trec_eval)."""
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranking: Sequence[str], relevant: dict[str, int], k: int = 100) -> float:
    """Share of the relevant documents found in the top k."""
    wanted = {doc for doc, g in relevant.items() if g > 0}
    return len(wanted.intersection(ranking[:k])) / len(wanted) if wanted else 0.0


@dataclass
class ModeResult:
    """One mode's figures over a query set; latencies in milliseconds."""

    mode: str
    queries: int
    ndcg_at_10: float
    recall_at_100: float
    p50_ms: float
    p95_ms: float
    per_query: dict[str, float] = field(default_factory=dict, repr=False)  # query id → nDCG@10

    def summary(self) -> dict[str, float | int | str]:
        out = asdict(self)
        out.pop("per_query")
        return out


Searcher = Callable[[str], Sequence[str]]  # query text → corpus ids, best first


def evaluate(mode: str, search: Searcher, queries: dict[str, str], qrels: Qrels) -> ModeResult:
    """Run every query through `search`, timing each call, and score the rankings."""
    ndcg, recall, seconds = {}, [], []
    for qid, query in queries.items():
        started = time.perf_counter()
        ranking = list(search(query))
        seconds.append(time.perf_counter() - started)
        ndcg[qid] = ndcg_at(ranking, qrels[qid], 10)
        recall.append(recall_at(ranking, qrels[qid], 100))
    ms = np.array(seconds) * 1000
    return ModeResult(
        mode,
        len(queries),
        round(float(np.mean(list(ndcg.values()))), 4) if ndcg else 0.0,
        round(float(np.mean(recall)), 4) if recall else 0.0,
        round(float(np.percentile(ms, 50)), 2) if len(ms) else 0.0,
        round(float(np.percentile(ms, 95)), 2) if len(ms) else 0.0,
        ndcg,
    )
