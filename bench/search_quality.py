"""Search quality on a BEIR-layout set: the pipeline's rankers beside references computed outside it, same run.

`python -m docpipe.bench.search_quality BEIR_DIR [--data-dir D] [--json OUT]`

Through the pipeline (the set ingested by `Client.ingest_bytes`, as `docpipe
eval` does): dense-only, BM25-only and the fusion alternatives, all from the
same candidate lists (one SQL round trip per query, `depth` chunks per side),
each grouped per document by its best chunk. Outside the pipeline: BM25 by the
`bm25s` package over whole documents, tokenised by the collection's own
Postgres analyzer (the same analyzer) and by PyStemmer with English stop words;
dense exact search by sentence-transformers over whole documents. Also the
recall@k of the HNSW index against an exact scan of the same vectors.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from sqlalchemy import text

from docpipe.bench.common import machine_info
from docpipe.config import SearchConfig, Settings
from docpipe.evaluation import MARKDOWN, BeirSet, as_markdown, default_collection, ndcg_at, recall_at
from docpipe.fusion import best_per_group, ranked
from docpipe.search import Candidates, fetch_candidates, fuse

log = logging.getLogger(__name__)
DEPTH = 300  # chunks per side per query: covers 100 documents of a few chunks each
Ranking = list[str]  # corpus ids, best first


def fusion_variants(c: Candidates, source_of: dict[int, str], default: SearchConfig) -> dict[str, Ranking]:
    """Every ranking compared, from one query's candidates, each as corpus ids best first."""
    out: dict[str, Ranking] = {}
    for mode in ("vector", "text"):
        out[mode] = [source_of[d] for d, _ in ranked(fuse(c, mode, default, by_document=True))]  # type: ignore[arg-type]
    for method in ("zscore", "minmax", "rrf"):
        for w in (0.3, 0.4, 0.5, 0.6, 0.7):
            config = default.model_copy(update={"fusion": method, "vector_weight": w})
            for by_document in (True, False):
                scores = fuse(c, "hybrid", config, by_document=by_document)
                if not by_document:
                    scores = best_per_group(scores, c.document_of)
                name = f"hybrid {method} w={w} ({'documents' if by_document else 'chunks'} fused)"
                out[name] = [source_of[d] for d, _ in ranked(scores)]
    return out


def score_rankings(rankings: dict[str, dict[str, Ranking]], qrels: dict) -> dict[str, dict[str, float]]:
    """Ranker → nDCG@10 and Recall@100, averaged over queries."""
    by_ranker: dict[str, list[tuple[float, float]]] = {}
    for qid, per_ranker in rankings.items():
        for name, ranking in per_ranker.items():
            by_ranker.setdefault(name, []).append(
                (ndcg_at(ranking, qrels[qid], 10), recall_at(ranking, qrels[qid], 100))
            )
    return {
        name: {
            "ndcg@10": round(float(np.mean([n for n, _ in v])), 4),
            "recall@100": round(float(np.mean([r for _, r in v])), 4),
        }
        for name, v in by_ranker.items()
    }


def reference_bm25(
    ids: Sequence[str], tokens: Sequence[list[str]], queries: dict[str, list[str]], *, k1: float, b: float
) -> dict[str, Ranking]:
    """bm25s (Lucene idf) over whole documents, from pre-tokenised text."""
    import bm25s

    vocab: dict[str, int] = {}
    corpus_ids = [[vocab.setdefault(t, len(vocab)) for t in doc] for doc in tokens]
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(bm25s.tokenization.Tokenized(ids=corpus_ids, vocab=vocab), show_progress=False)
    out = {}
    for qid, words in queries.items():
        known = [w for w in words if w in vocab]
        if not known:
            out[qid] = []
            continue
        scores = retriever.get_scores(known)
        top = np.argsort(-scores)[:100]
        out[qid] = [ids[i] for i in top if scores[i] > 0]
    return out


def postgres_tokens(session, config: str, texts: Sequence[str]) -> list[list[str]]:
    """Each text as the lexemes (with repeats) the Postgres text search configuration makes of it."""
    rows = session.execute(
        text(
            "SELECT o, coalesce((SELECT array_agg(t.lexeme) FROM unnest(to_tsvector(CAST(:c AS regconfig), x)) t, "
            "  generate_series(1, cardinality(t.positions))), '{}') "
            "FROM unnest(CAST(:xs AS text[])) WITH ORDINALITY AS u(x, o) ORDER BY o"
        ),
        {"c": config, "xs": list(texts)},
    ).all()
    return [list(r[1]) for r in rows]


def reference_dense(
    model_dir: str, ids: Sequence[str], texts: Sequence[str], queries: dict[str, str]
) -> dict[str, Ranking]:
    """sentence-transformers fp32, exact cosine over whole documents (truncated at the model's limit)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    docs = model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    q = model.encode(list(queries.values()), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    sims = q @ docs.T
    return {qid: [ids[i] for i in np.argsort(-sims[n])[:100]] for n, qid in enumerate(queries)}


def hnsw_recall(session, collection: str, query_vecs: np.ndarray, k: int = 100) -> float:
    """Mean share of the exact top-k (cosine, all vectors of the collection) that docpipe_search returns."""
    from docpipe.search import vector_literal

    rows = session.execute(
        text("SELECT chunk_id, embedding::text FROM docpipe_chunks WHERE collection = :c"), {"c": collection}
    ).all()
    ids = np.array([r[0] for r in rows])
    matrix = np.array([json.loads(r[1]) for r in rows], dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    found = []
    for vec in query_vecs:
        exact = set(ids[np.argsort(-(matrix @ vec))[:k]].tolist())
        got = session.execute(
            text("SELECT chunk_id FROM docpipe_search(CAST(:q AS vector), :c, :k)"),
            {"q": vector_literal(vec), "c": collection, "k": k},
        ).scalars()
        found.append(len(exact.intersection(got)) / k)
    return round(float(np.mean(found)), 4)


def run(beir: BeirSet, client, *, collection: str, settings: Settings, references: bool = True) -> dict:
    qrels = beir.qrels()
    queries = beir.queries(qrels)
    corpus = list(beir.corpus())
    job = client.ingest_bytes(((i, as_markdown(t, x), MARKDOWN) for i, t, x in corpus), collection=collection)
    job.wait(progress=True)
    embedder = client.embedder(settings.embed.model)
    started = time.perf_counter()
    vecs = {qid: embedder.embed_query(q) for qid, q in queries.items()}
    embed_s = time.perf_counter() - started
    rankings: dict[str, dict[str, Ranking]] = {}
    with client.sessions.begin() as session:
        source_of = dict(
            session.execute(
                text("SELECT d.id, d.source FROM documents d JOIN collections c ON c.id = d.collection_id "
                     "WHERE c.name = :c"),
                {"c": collection},
            ).all()
        )  # fmt: skip
        chunks = session.execute(
            text("SELECT count(*) FROM docpipe_chunks WHERE collection = :c"), {"c": collection}
        ).scalar_one()
        started = time.perf_counter()
        for qid, q in queries.items():
            cands = fetch_candidates(
                session, query=q, query_vec=vecs[qid], collection=collection, depth=DEPTH, mode="hybrid", where=None
            )
            rankings[qid] = fusion_variants(cands, source_of, settings.search)
        candidates_s = time.perf_counter() - started
        config = session.execute(
            text("SELECT text_config::text, bm25_k1, bm25_b FROM collections WHERE name = :c"), {"c": collection}
        ).one()
        recall = hnsw_recall(session, collection, np.stack(list(vecs.values()))[:200])
        if references:
            ids = [i for i, _, _ in corpus]
            whole = [f"{t}\n\n{x}" for _, t, x in corpus]
            doc_tokens = postgres_tokens(session, config[0], whole)
            q_tokens = dict(zip(queries, postgres_tokens(session, config[0], list(queries.values())), strict=True))
    out: dict = {"machine": machine_info(), "collection": collection, "queries": len(queries), "chunks": chunks}
    out["timing"] = {"query_embed_ms_mean": round(embed_s / len(queries) * 1000, 2),
                     "candidates_sql_ms_mean": round(candidates_s / len(queries) * 1000, 2)}  # fmt: skip
    out["hnsw_recall@100"] = recall
    if references:
        ref = {
            "reference bm25 (bm25s, same analyzer, whole documents)": reference_bm25(
                ids, doc_tokens, q_tokens, k1=float(config[1]), b=float(config[2])
            ),
            "reference bm25 (bm25s, PyStemmer + English stop words, k1 0.9 b 0.4)": _bm25s_stemmed(ids, whole, queries),
            "reference dense (sentence-transformers, exact, whole documents)": reference_dense(
                _model_dir(settings), ids, whole, queries
            ),
        }
        for name, per_query in ref.items():
            for qid, ranking in per_query.items():
                rankings[qid][name] = ranking
    out["rankers"] = score_rankings(rankings, qrels)
    return out


def _bm25s_stemmed(ids: Sequence[str], texts: Sequence[str], queries: dict[str, str]) -> dict[str, Ranking]:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    retriever.index(tokens, show_progress=False)
    q_tokens = bm25s.tokenize(list(queries.values()), stopwords="en", stemmer=stemmer, show_progress=False)
    docs, _scores = retriever.retrieve(q_tokens, k=100, show_progress=False, n_threads=1)
    return {qid: [ids[i] for i in docs[n]] for n, qid in enumerate(queries)}


def _model_dir(settings: Settings) -> str:
    from docpipe.embed.st_config import resolve_model_dir

    return str(resolve_model_dir(settings.embed.model, cache_dir=settings.model_cache_dir))


def print_table(result: dict, out: Callable[[str], None] = print) -> None:
    out(f"{result['collection']}: {result['queries']} queries, {result['chunks']} chunks; {result['machine']}")
    out(f"HNSW recall@100 vs exact scan: {result['hnsw_recall@100']}; {result['timing']}")
    out(f"{'ranker':<72} {'nDCG@10':>8} {'R@100':>7}")
    for name, m in sorted(result["rankers"].items(), key=lambda kv: -kv[1]["ndcg@10"]):
        out(f"{name:<72} {m['ndcg@10']:>8.4f} {m['recall@100']:>7.4f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m docpipe.bench.search_quality", description=__doc__)
    p.add_argument("beir_dir", type=Path)
    p.add_argument("--split", default=None)
    p.add_argument("--collection", default=None)
    p.add_argument("--data-dir", type=Path, default=None, help="a running or new embedded stack's data dir")
    p.add_argument("--no-references", action="store_true", help="skip the outside-the-pipeline references")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = Settings() if args.data_dir is None else Settings(data_dir=args.data_dir)
    beir = BeirSet.open(args.beir_dir, args.split)
    from docpipe.cli import _client_or_embedded

    with ExitStack() as stack:
        client = stack.enter_context(_client_or_embedded(settings))
        result = run(beir, client, collection=args.collection or default_collection(args.beir_dir),
                     settings=settings, references=not args.no_references)  # fmt: skip
    result["defaults"] = SearchConfig().model_dump()
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
