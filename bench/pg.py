"""Plain psycopg access to the stack's Postgres for bulk loads the pipeline API does not offer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def psycopg_connect(database_url: str, *, autocommit: bool = False):
    """A psycopg connection from a SQLAlchemy URL, with pgvector's types registered."""
    import psycopg
    from pgvector.psycopg import register_vector
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql")
    conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=autocommit)
    register_vector(conn)
    return conn


def copy_rows(conn, sql: str, types: Sequence[str], rows: Iterable[tuple]) -> None:
    """Binary COPY of `rows` with the given Postgres type names."""
    with conn.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


def random_unit_vectors(n: int, dim: int, *, seed: int) -> np.ndarray:
    """`n` random float32 unit vectors: the worst case for an ANN index (no cluster structure)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors
