"""Measurement 5: search latency over a collection of N synthetic chunks, against the bare query embedding."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from docpipe.bench.common import Goal, Section, percentile_ms, ratio
from docpipe.bench.harness import RunningStack
from docpipe.bench.pg import copy_rows, psycopg_connect, random_unit_vectors

COLLECTION = "bench-synthetic"
WORDS_PER_CHUNK = 150  # synthetic text length, words (real 256-token chunks hold ~150-200)
CHUNKS_PER_DOCUMENT = 20  # synthetic chunks per synthetic document (the planner's row estimates depend on it)
VOCABULARY = 4000  # most frequent words of the real chunks
WARMUP_QUERIES = 3
K = 10  # hits per search


def vocabulary(texts: Sequence[str], size: int = VOCABULARY) -> dict[str, int]:
    """The `size` most frequent words of the real chunks and their counts (synthetic text follows Zipf's law)."""
    counts = Counter(w for t in texts for w in re.findall(r"[a-z]{3,14}", t.lower()))
    return dict(counts.most_common(size)) or {"document": 1, "page": 1, "text": 1}


def query_texts(texts: Sequence[str], n: int, *, seed: int = 2) -> list[str]:
    """`n` queries: 4 to 10 leading words of real chunks."""
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(texts), size=n, replace=len(texts) < n):
        words = texts[int(i)].split()
        out.append(" ".join(words[: 4 + int(rng.integers(0, 7))]) or "document")
    return out


def fill_synthetic(run: RunningStack, n: int, words: dict[str, int], *, seed: int = 3) -> dict[str, float]:
    """N chunks of words drawn by their real frequency, random unit vectors, CHUNKS_PER_DOCUMENT per document.

    The model's partial HNSW index is dropped for the load and built again after (see `hnsw_load`).
    """
    from docpipe import store

    model = run.settings.embed.model
    dim = run.client.embedder(model).dim
    with run.client.sessions.begin() as session:
        coll = store.ensure_collection(session, COLLECTION, model=model, dim=dim)
    rng = np.random.default_rng(seed)
    vocab = np.asarray(list(words))
    weights = np.asarray(list(words.values()), dtype=np.float64)
    picks = rng.choice(len(vocab), size=(n, WORDS_PER_CHUNK), p=weights / weights.sum())
    vectors = random_unit_vectors(n, dim, seed=seed)
    n_docs = -(-n // CHUNKS_PER_DOCUMENT)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with psycopg_connect(run.stack.database_url) as conn:
        copy_rows(
            conn,
            "COPY documents (collection_id, source, sha256, media_type, size_bytes, content, state, page_count, "
            "chunk_count) FROM STDIN WITH (FORMAT BINARY)",
            ["int4", "text", "bytea", "text", "int8", "bytea", "text", "int4", "int4"],
            (
                (
                    coll.id,
                    f"bench://synthetic/{d}",
                    hashlib.sha256(f"bench synthetic {d}".encode()).digest(),
                    "text/plain",
                    0,
                    b"",
                    "ready",
                    1,
                    CHUNKS_PER_DOCUMENT,
                )
                for d in range(n_docs)
            ),
        )
        doc_ids = [
            r[0] for r in conn.execute("SELECT id FROM documents WHERE collection_id = %s ORDER BY id", (coll.id,))
        ]
        conn.execute(f"DROP INDEX IF EXISTS embeddings_hnsw_m{int(coll.model_id)}")
        copy_rows(
            conn,
            "COPY chunks (document_id, ordinal, text, token_count, page_start, page_end) "
            "FROM STDIN WITH (FORMAT BINARY)",
            ["int8", "int4", "text", "int4", "int4", "int4"],
            (
                (
                    doc_ids[i // CHUNKS_PER_DOCUMENT],
                    i % CHUNKS_PER_DOCUMENT,
                    " ".join(vocab[picks[i]]),
                    WORDS_PER_CHUNK,
                    1,
                    1,
                )
                for i in range(n)
            ),
        )
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT ch.id FROM chunks ch JOIN documents d ON d.id = ch.document_id WHERE d.collection_id = %s "
                "ORDER BY ch.id",
                (coll.id,),
            )
        ]
        copy_rows(
            conn,
            "COPY embeddings (chunk_id, model_id, embedding) FROM STDIN WITH (FORMAT BINARY)",
            ["int8", "int4", "vector"],
            ((cid, coll.model_id, vectors[i]) for i, cid in enumerate(ids)),
        )
        conn.commit()
        timings["copy_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    with run.client.sessions.begin() as session:
        store.create_hnsw_index(session, coll.model_id, dim)
    timings["index_s"] = time.perf_counter() - t1
    with psycopg_connect(run.stack.database_url, autocommit=True) as conn:
        conn.execute("ANALYZE chunks, embeddings, documents")
    return timings


def explain_search(database_url: str, query: str, query_vec: np.ndarray, collection: str, k: int) -> dict:
    """Server time and plan of one warm `docpipe_search` and one `docpipe_text_search` call (auto_explain)."""
    calls = {
        "ann": ("SELECT * FROM docpipe_search(%s, %s, %s, NULL)", (query_vec, collection, k)),
        "text": ("SELECT * FROM docpipe_text_search(%s, %s, %s, NULL)", (query, collection, k)),
    }
    out: dict[str, dict] = {}
    with psycopg_connect(database_url, autocommit=True) as conn:
        for stmt in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_analyze = on",
            "SET auto_explain.log_nested_statements = on",
        ):
            conn.execute(stmt)
        messages: list[str] = []
        conn.add_notice_handler(lambda d: messages.append(d.message_primary or ""))
        for name, (sql, params) in calls.items():
            conn.execute(sql, params).fetchall()  # warm: plan cache, buffers
            conn.execute("SET client_min_messages = log")
            messages.clear()
            conn.execute(sql, params).fetchall()
            conn.execute("RESET client_min_messages")
            top = next((m for m in messages if "Query Text: SELECT * FROM docpipe_" in m), "")
            duration = re.search(r"duration: ([\d.]+) ms", top)
            plan = "\n".join(messages)
            out[name] = {
                "server_ms": float(duration.group(1)) if duration else None,
                "plan": "\n".join(line for line in plan.splitlines() if not line.startswith("Query Parameters")),
            }
    out["ann"]["uses_index"] = "embeddings_hnsw" in out["ann"]["plan"]
    out["text"]["uses_index"] = "chunk_terms_impact" in out["text"]["plan"]
    return out


def bounded_bm25_agreement(database_url: str, queries: Sequence[str], collection: str, k: int) -> dict:
    """The default (bounded) BM25 against the exhaustive one, per query at depth `k`.

    `overlap`: the share of the exhaustive top k that the bounded one returns; `score_ratio`: the sum of
    the bounded top k's BM25 scores over the exhaustive top k's (1.0: as good a top k by BM25's own
    measure, even where near-ties are broken differently); times in ms.
    """
    sql = "SELECT chunk_id, rank FROM docpipe_text_search(%s, %s, %s, NULL, %s)"
    overlap, score_ratio, seconds = [], [], {"bounded": [], "exhaustive": []}
    with psycopg_connect(database_url, autocommit=True) as conn:
        for q in queries:
            got = {}
            for name, per_term in (("bounded", 0), ("exhaustive", -1)):
                t0 = time.perf_counter()
                got[name] = conn.execute(sql, (q, collection, k, per_term)).fetchall()
                seconds[name].append(time.perf_counter() - t0)
            if not got["exhaustive"]:
                continue
            want = {cid for cid, _ in got["exhaustive"]}
            overlap.append(len(want & {cid for cid, _ in got["bounded"]}) / len(want))
            score_ratio.append(sum(r for _, r in got["bounded"]) / sum(r for _, r in got["exhaustive"]))
    return {
        "overlap": float(np.mean(overlap)) if overlap else None,
        "score_ratio": float(np.mean(score_ratio)) if score_ratio else None,
        "score_ratio_min": float(np.min(score_ratio)) if score_ratio else None,
        "p50_ms": {name: percentile_ms(v, 50) for name, v in seconds.items()},
    }


def _latencies(queries: Sequence[str], runners: dict[str, Callable[[str], object]]) -> dict[str, list[float]]:
    """Seconds per query for each runner, the runners taking turns on every query."""
    for q in queries[:WARMUP_QUERIES]:
        for run in runners.values():
            run(q)
    out: dict[str, list[float]] = {name: [] for name in runners}
    for q in queries:
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(q)
            out[name].append(time.perf_counter() - t0)
    return out


def measure_query(run: RunningStack, real_texts: Sequence[str], *, n: int, queries: int) -> Section:
    from docpipe.search import candidate_depth, search_chunks

    section = Section(
        "query", f"Query latency over {n} synthetic chunks", "p50 of the bare query embedding (embed_query) = 1.0"
    )
    fill = fill_synthetic(run, n, vocabulary(real_texts))
    section.add(
        "synthetic chunks",
        n,
        "",
        f"random unit vectors, {WORDS_PER_CHUNK} words drawn by corpus frequency, {CHUNKS_PER_DOCUMENT} per document",
    )
    section.add("fill: COPY chunks + embeddings", round(fill["copy_s"], 2), "s")
    section.add("fill: CREATE INDEX (HNSW)", round(fill["index_s"], 2), "s", "includes the real chunks' vectors")

    client = run.client
    embedder = client.embedder(run.settings.embed.model)
    qs = query_texts(real_texts, queries)

    def sql_vector(q: str) -> object:
        vec = embedder.embed_query(q)
        with client.sessions.begin() as session:
            return search_chunks(
                session,
                query=q,
                query_vec=vec,
                collection=COLLECTION,
                depth=K,
                config=run.settings.search,
                mode="vector",
            )

    runners: dict[str, Callable[[str], object]] = {
        "embed_query": embedder.embed_query,
        "embed + SQL ANN (no client)": sql_vector,
        "search vector": lambda q: client.search(q, collection=COLLECTION, k=K, mode="vector"),
        "search text (BM25)": lambda q: client.search(q, collection=COLLECTION, k=K, mode="text"),
        "search hybrid": lambda q: client.search(q, collection=COLLECTION, k=K, mode="hybrid"),
        "search hybrid, group_by document": lambda q: client.search(
            q, collection=COLLECTION, k=K, mode="hybrid", group_by="document"
        ),
        "search hybrid + rerank": lambda q: client.search(q, collection=COLLECTION, k=K, rerank=True),
    }
    try:
        runners["search hybrid + rerank"](qs[0])
    except Exception as exc:  # the reranker is another engineer's moving part; report, don't crash
        del runners["search hybrid + rerank"]
        section.notes.append(f"rerank not measured: {type(exc).__name__}: {exc}")
    try:
        explained = explain_search(run.stack.database_url, qs[0], embedder.embed_query(qs[0]), COLLECTION, K)
    except Exception as exc:  # auto_explain missing from the server: a diagnostic, not a figure
        explained = {"error": f"{type(exc).__name__}: {exc}"}
    lat = _latencies(qs, runners)
    depth = candidate_depth(K, run.settings.search)
    agreement = bounded_bm25_agreement(run.stack.database_url, qs, COLLECTION, depth)
    base = percentile_ms(lat["embed_query"], 50)
    for name, samples in lat.items():
        p50, p95 = percentile_ms(samples, 50), percentile_ms(samples, 95)
        note = "tiny random cross-encoder (2 layers, hidden 32), 50 candidates" if "rerank" in name else ""
        section.add(f"{name} p50 / p95", f"{p50:.1f} / {p95:.1f}", "ms", note)
        if name != "embed_query":
            section.add(f"{name} p50 ÷ embed_query p50", round(ratio(p50, base) or 0, 2), "x")
    for name, what, index in (("ann", "docpipe_search()", "HNSW"), ("text", "docpipe_text_search()", "BM25 postings")):
        if name in explained:
            used = explained[name]["uses_index"]
            section.add(
                f"{what} inside Postgres (one warm query)",
                explained[name]["server_ms"],
                "ms",
                f"{index} index in the plan" if used else f"no {index} index in the plan: scans the collection",
            )
    section.add(
        f"BM25 bounded vs exhaustive, top {depth}: share of the exhaustive top found",
        round(agreement["overlap"] or 0, 3),
        "",
        "synthetic text is a worst case: every query term is common and scores are near-ties",
    )
    section.add(
        f"BM25 bounded vs exhaustive, top {depth}: BM25 score sum (mean / min)",
        f"{agreement['score_ratio'] or 0:.3f} / {agreement['score_ratio_min'] or 0:.3f}",
        "x",
        "1.0: a top k as good by BM25's own measure",
    )
    section.add(
        f"BM25 SQL p50 at depth {depth}: bounded / exhaustive",
        f"{agreement['p50_ms']['bounded']:.1f} / {agreement['p50_ms']['exhaustive']:.1f}",
        "ms",
        "DOCPIPE_SEARCH__BM25_PER_TERM 0 (max(1000, 10 k) postings per term) / -1",
    )
    section.data["backend"] = embedder.backend
    section.notes.append(
        f"{len(qs)} queries of 4-10 words from real chunks, k={K}, backend {embedder.backend}; "
        "rerank latency is with a tiny random model, not a real cross-encoder"
    )
    hybrid = lat["search hybrid"]
    limits = "dense (HNSW at depth 100) + query embedding on a shared CPU; see the BM25 and ANN rows"
    section.goals += [
        Goal("hybrid search p50 (query embedding included)", percentile_ms(hybrid, 50), 25.0, "<=", limits),
        Goal("hybrid search p95 (query embedding included)", percentile_ms(hybrid, 95), 50.0, "<=", limits),
    ]
    latencies_ms = {name: [round(t * 1000, 3) for t in samples] for name, samples in lat.items()}
    section.data.update(explain=explained, fill=fill, latencies_ms=latencies_ms, bm25_agreement=agreement)
    return section


def main(argv: list[str] | None = None) -> int:
    """`python -m docpipe.bench.query`: the query-latency measurement alone, on a fresh embedded stack."""
    import argparse
    import tempfile
    from pathlib import Path

    from rich.console import Console

    from docpipe.bench.common import machine_info
    from docpipe.bench.corpus import default_docs, manifest_class, parse_corpus, sample_texts
    from docpipe.bench.harness import bench_settings, running_stack
    from docpipe.bench.report import print_report

    p = argparse.ArgumentParser(prog="python -m docpipe.bench.query", description=main.__doc__)
    p.add_argument("--chunks", type=int, default=100_000, help="synthetic chunks in the collection")
    p.add_argument("--queries", type=int, default=50, help="timed queries per search mode")
    p.add_argument("--docs", type=Path, default=None, help="documents whose words and chunks seed the queries")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="docpipe-bench-query-") as work:
        settings = bench_settings(Path(work) / "parse")
        docs = args.docs or default_docs()
        texts = sample_texts(parse_corpus(docs, settings, only=manifest_class(docs)), 2000)
        with running_stack(Path(work)) as run:
            section = measure_query(run, texts, n=args.chunks, queries=args.queries)
    print_report(Console(), [section], machine_info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
