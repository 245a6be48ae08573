"""OCR provenance on chunks: `ocr` and the mean recognition confidence, in the users' view.

- `chunks.ocr_confidence real`: mean recognition confidence (0..1) of the chunk's text read from
  page images by OCR, weighted by tokens; NULL when all of it came from a text layer.
- `chunks.ocr boolean`: generated (`ocr_confidence IS NOT NULL`), so writers cannot disagree.
- `docpipe_chunks` gains `ocr` and `ocr_confidence` (appended; 0006's definition otherwise):
    SELECT source, page_start, ocr_confidence FROM docpipe_chunks WHERE ocr AND ocr_confidence < 0.8;

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from importlib import import_module

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_VIEW_START = "CREATE OR REPLACE VIEW docpipe_chunks"
_LAST_COLUMN = "\nFROM chunks ch"


def _previous_view() -> str:
    """`docpipe_chunks` as revision 0006 defines it."""
    v6 = import_module("docpipe.migrations.versions.0006_lifecycle").UPGRADE
    start = v6.index(_VIEW_START)
    return v6[start : v6.index(";", start) + 1]


def view() -> str:
    """0006's view with the OCR columns appended (CREATE OR REPLACE keeps existing columns in place)."""
    previous = _previous_view()
    assert _LAST_COLUMN in previous
    return previous.replace(_LAST_COLUMN, ",\n       ch.ocr,\n       ch.ocr_confidence" + _LAST_COLUMN, 1)


def upgrade() -> None:
    op.execute("ALTER TABLE chunks ADD COLUMN ocr_confidence real")
    op.execute("ALTER TABLE chunks ADD COLUMN ocr boolean GENERATED ALWAYS AS (ocr_confidence IS NOT NULL) STORED")
    op.execute(view())


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS docpipe_chunks")
    op.execute(_previous_view())
    op.execute("ALTER TABLE chunks DROP COLUMN ocr")
    op.execute("ALTER TABLE chunks DROP COLUMN ocr_confidence")
