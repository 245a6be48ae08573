"""Mark a model whose HNSW index is dropped during a bulk load, to be rebuilt when its queue drains.

Building an HNSW index after a bulk COPY measured 4.5x faster than
maintaining it row by row (`python -m docpipe.bench`, section hnsw_load).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE embedding_models ADD COLUMN index_deferred boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("ALTER TABLE embedding_models DROP COLUMN index_deferred")
