"""Rechunk: a collection's next generation of chunks is built in a hidden shadow collection.

- `collections.rechunk_of`: set on the shadow collection that a rechunk
  (`docpipe reindex --rechunk`) fills. It holds a copy of every live document
  of the collection it belongs to, chunked with the new settings (and embedded
  with the new model, when one is given) by the ordinary pipeline. Searches,
  BM25 statistics and the HNSW filter are per collection, so the shadow's
  chunks never reach a search of the live one. One transaction then moves the
  new chunks in and drops the old ones (`pipeline/store/rechunk.py`).
- `docpipe_chunks` leaves shadow collections out (0007's view, filtered).
- `docpipe_problems` reports a document whose re-parse failed against the
  live collection, as `rechunk_failed` (0006's view, rewritten).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from importlib import import_module

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE collections ADD COLUMN rechunk_of integer UNIQUE REFERENCES collections (id) ON DELETE CASCADE
    CHECK (rechunk_of <> id);
"""

DOWNGRADE = r"""
DELETE FROM collections WHERE rechunk_of IS NOT NULL;
"""

# 0007's view (0006's filter on ready versions), without the chunks of shadow collections.
VIEW_FILTER = ("WHERE d.state = 'ready';", "WHERE d.state = 'ready' AND c.rechunk_of IS NULL;")

# 0006's problems view: a failed re-parse is reported against the collection being rechunked.
PROBLEM_EDITS = (
    ("SELECT c.name AS collection,", "SELECT coalesce(r.name, c.name) AS collection,"),
    (
        "CASE WHEN d.state = 'failed' THEN 'failed' ELSE 'no_text' END AS problem,",
        "CASE WHEN c.rechunk_of IS NOT NULL THEN 'rechunk_failed'\n"
        "            WHEN d.state = 'failed' THEN 'failed' ELSE 'no_text' END AS problem,",
    ),
    (
        "FROM documents d JOIN collections c ON c.id = d.collection_id\n",
        "FROM documents d JOIN collections c ON c.id = d.collection_id\n"
        "LEFT JOIN collections r ON r.id = c.rechunk_of\n",
    ),
    (
        "WHERE d.state = 'failed' OR (d.state = 'ready' AND d.chunk_count = 0);",
        "WHERE d.state = 'failed' OR (d.state = 'ready' AND d.chunk_count = 0 AND c.rechunk_of IS NULL);",
    ),
)


def view() -> str:
    """`docpipe_chunks` as of this revision."""
    body = import_module("docpipe.migrations.versions.0007_ocr").view()
    assert body.count(VIEW_FILTER[0]) == 1
    return body.replace(*VIEW_FILTER)


def _previous_problems() -> str:
    v6 = import_module("docpipe.migrations.versions.0006_lifecycle").UPGRADE
    start = v6.index("CREATE VIEW docpipe_problems")
    return v6[start : v6.index(";", v6.index("WHERE d.state", start)) + 1]


def problems_view() -> str:
    """`docpipe_problems` as of this revision (same columns as 0006's)."""
    body = _previous_problems().replace("CREATE VIEW", "CREATE OR REPLACE VIEW")
    for old, new in PROBLEM_EDITS:
        assert body.count(old) == 1, old
        body = body.replace(old, new)
    return body


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(view())
    op.execute(problems_view())


def downgrade() -> None:
    op.execute(DOWNGRADE)
    op.execute("DROP VIEW IF EXISTS docpipe_chunks")
    op.execute(import_module("docpipe.migrations.versions.0007_ocr").view())
    op.execute("DROP VIEW IF EXISTS docpipe_problems")
    op.execute(_previous_problems())
    op.execute("ALTER TABLE collections DROP COLUMN rechunk_of")
