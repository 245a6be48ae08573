"""Quality guard of the fast backends, as users see it: nDCG@10 of exact dense search on a BEIR-layout set.

Every backend embeds the same corpus and queries; its nDCG@10 is compared
with torch-fp32's (the reference) in the same run. ``max_docs`` keeps every
judged document and fills up with others spread evenly over the corpus, so a
subset is still a fair (if easier) retrieval task.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from docpipe.bench.common import Goal, Section
from docpipe.config import Settings

NDCG_TOLERANCE = 0.005  # allowed nDCG@10 loss of a fast backend against fp32
TOP10_OVERLAP_GOAL = 0.9  # mean share of fp32's top-10 a fast backend also returns
K = 10


@dataclass
class BeirSet:
    """Documents (title + text, as one passage), queries and binary judgments of a BEIR-layout folder."""

    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    relevant: dict[str, set[str]]  # query id -> relevant document ids


def default_beir_dir() -> Path | None:
    """The shared SciFact train split beside the repo, if present."""
    from docpipe.bench.corpus import REPO

    for candidate in (REPO.parent / "shared" / "ir" / "scifact-train",):
        if (candidate / "corpus.jsonl").is_file():
            return candidate
    return None


def load_beir(folder: Path, *, max_docs: int | None = None, split: str = "train") -> BeirSet:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), at most ``max_docs`` documents."""
    relevant: dict[str, set[str]] = {}
    for line in (folder / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, score = line.split("\t")[:3]
        if float(score) > 0:
            relevant.setdefault(qid, set()).add(did)
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").open(encoding="utf-8")]
    if max_docs is not None and max_docs < len(corpus):
        judged = set().union(*relevant.values())
        keep = [d for d in corpus if d["_id"] in judged]
        others = [d for d in corpus if d["_id"] not in judged]
        room = max(0, max_docs - len(keep))
        if room and others:
            step = len(others) / room
            keep += [others[int(i * step)] for i in range(min(room, len(others)))]
        corpus = keep
    queries = [json.loads(line) for line in (folder / "queries.jsonl").open(encoding="utf-8")]
    queries = [q for q in queries if q["_id"] in relevant]
    return BeirSet(
        doc_ids=[d["_id"] for d in corpus],
        docs=[f"{d.get('title', '')}. {d['text']}".strip(". ") for d in corpus],
        query_ids=[q["_id"] for q in queries],
        queries=[q["text"] for q in queries],
        relevant=relevant,
    )


def ndcg_at_k(ranked: Sequence[Sequence[str]], query_ids: Sequence[str], relevant: dict[str, set[str]]) -> float:
    """Mean nDCG@K with binary relevance (BEIR's convention) over the queries."""
    scores = []
    for qid, ids in zip(query_ids, ranked, strict=True):
        rel = relevant.get(qid, set())
        dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ids[:K]) if d in rel)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(rel), K)))
        scores.append(dcg / ideal if ideal else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def top_k(doc_vectors: np.ndarray, query_vectors: np.ndarray) -> np.ndarray:
    """(queries, K) indices of the nearest documents by dot product (vectors are unit length), best first."""
    scores = query_vectors @ doc_vectors.T
    part = np.argpartition(-scores, K, axis=1)[:, :K]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


Encode = Callable[[list[str]], np.ndarray]


def measure_quality(
    beir: BeirSet, backends: dict[str, tuple[Encode, Encode]], *, reference: str = "torch-fp32", label: str = ""
) -> Section:
    """nDCG@10 and top-10 overlap of each backend (documents, queries encoders) against ``reference``."""
    section = Section(
        "quality",
        "Search quality of the embedding backends (exact dense search)",
        f"{reference} on the same {len(beir.docs)} documents and {len(beir.queries)} queries{label}",
    )
    tops: dict[str, np.ndarray] = {}
    ndcg: dict[str, float] = {}
    for name, (encode_docs, encode_queries) in backends.items():
        t0 = time.perf_counter()
        tops[name] = top_k(encode_docs(beir.docs), encode_queries(beir.queries))
        ranked = [[beir.doc_ids[i] for i in row] for row in tops[name]]
        ndcg[name] = ndcg_at_k(ranked, beir.query_ids, beir.relevant)
        section.data.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
    base = ndcg[reference]
    section.add(f"{reference} nDCG@10", round(base, 4))
    for name in backends:
        if name == reference:
            continue
        overlap = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(tops[name], tops[reference], strict=True)]))
        section.add(f"{name} nDCG@10", round(ndcg[name], 4), "", f"{ndcg[name] - base:+.4f} vs {reference}")
        section.add(f"{name} top-10 overlap with {reference}", round(overlap, 3))
        section.goals.append(Goal(f"{name}: nDCG@10 loss vs {reference}", round(base - ndcg[name], 4), NDCG_TOLERANCE))
        section.goals.append(Goal(f"{name}: top-10 overlap", round(overlap, 3), TOP10_OVERLAP_GOAL, op=">="))
    section.data["ndcg"] = ndcg
    return section


def measure_quality_of_backends(beir: BeirSet, settings: Settings) -> Section:
    """The CPU backends `auto` chooses among (torch-fp32 the reference) on one BEIR set."""
    import gc

    from docpipe.embed import load_embedder
    from docpipe.embed.autoselect import cpu_candidates

    backends: dict[str, tuple[Encode, Encode]] = {}
    for name in cpu_candidates():
        if name == "onnx":  # the same graph as torch-fp32 to 1e-5: nothing to learn
            continue
        cfg = settings.embed.model_copy(update={"backend": name, "device": "cpu"})
        embedder = load_embedder(cfg, cache_dir=settings.model_cache_dir)
        backends[name] = (embedder.embed, lambda qs, e=embedder: np.stack([e.embed_query(q) for q in qs]))
    label = f" (SciFact subset: every judged document, then others evenly; {len(beir.docs)} in all)"
    section = measure_quality(beir, backends, label=label)
    backends.clear()
    gc.collect()
    return section
