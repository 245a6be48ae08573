"""Measurement 6: bulk-loading vectors into a table that has its HNSW index vs COPY then CREATE INDEX."""

from __future__ import annotations

import time

from docpipe.bench.common import Section, ratio
from docpipe.bench.pg import copy_rows, psycopg_connect, random_unit_vectors

TABLE = "bench_hnsw_load"


def _load(conn, vectors, dim: int, *, index_first: bool) -> dict[str, float]:
    """Seconds for the COPY and for the index build of one way of loading."""
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} (id int8 PRIMARY KEY, embedding vector({int(dim)}) NOT NULL)")
    create_index = f"CREATE INDEX {TABLE}_hnsw ON {TABLE} USING hnsw (embedding vector_cosine_ops)"
    out = {"index_s": 0.0}
    if index_first:
        conn.execute(create_index)
    t0 = time.perf_counter()
    copy_rows(
        conn,
        f"COPY {TABLE} (id, embedding) FROM STDIN WITH (FORMAT BINARY)",
        ["int8", "vector"],
        ((i, v) for i, v in enumerate(vectors)),
    )
    out["copy_s"] = time.perf_counter() - t0
    if not index_first:
        t1 = time.perf_counter()
        conn.execute(create_index)
        out["index_s"] = time.perf_counter() - t1
    out["total_s"] = time.perf_counter() - t0
    conn.execute(f"DROP TABLE {TABLE}")
    return out


def measure_hnsw_load(database_url: str, *, n: int, dim: int) -> Section:
    """Same `n` random vectors both ways; the ratio says whether to drop the index for bulk loads."""
    section = Section(
        "hnsw_load",
        "HNSW index during bulk load vs built after",
        f"COPY {n} vectors into a bare table, then CREATE INDEX = 1.0",
    )
    vectors = random_unit_vectors(n, dim, seed=1)
    with psycopg_connect(database_url, autocommit=True) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("maintenance_work_mem", "max_parallel_maintenance_workers")
        }
        after = _load(conn, vectors, dim, index_first=False)
        during = _load(conn, vectors, dim, index_first=True)
    r = ratio(during["total_s"], after["total_s"])
    section.add("vectors", n, "", f"dim {dim}, random unit vectors, m=16 ef_construction=64 (pgvector defaults)")
    section.add("COPY into indexed table", round(during["total_s"], 2), "s")
    section.add("COPY into bare table", round(after["copy_s"], 2), "s")
    section.add("CREATE INDEX after", round(after["index_s"], 2), "s")
    section.add("index during load ÷ build after", round(r or 0, 2), "x")
    section.notes.append(
        f"server: maintenance_work_mem={settings['maintenance_work_mem']}, "
        f"max_parallel_maintenance_workers={settings['max_parallel_maintenance_workers']}"
    )
    section.data.update(during=during, after=after, server=settings)
    return section
