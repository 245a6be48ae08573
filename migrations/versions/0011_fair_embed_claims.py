"""Fair embed claims: a document's queued chunks take turns with other documents' in rounds.

- `embedding_queue.round integer`: the chunk's ordinal in its document divided by 64 (the
  quantum, `store.FAIR_ROUND_CHUNKS`). Claims read the queue in (round, chunk_id) order, so every
  document's first 64 chunks come before any document's next 64: a document of 100,000 chunks
  queued first no longer holds back the documents queued after it until it is done.
- Index `embedding_queue_fair (model_id, round, chunk_id)` serves that order; the claim reads
  only the rows it takes (plus leased ones it skips).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

QUANTUM = 64  # chunks per document per round; frozen here, store.FAIR_ROUND_CHUNKS for new rows


def upgrade() -> None:
    op.execute("ALTER TABLE embedding_queue ADD COLUMN round integer NOT NULL DEFAULT 0")
    op.execute(
        f"UPDATE embedding_queue q SET round = c.ordinal / {QUANTUM} FROM chunks c "
        f"WHERE c.id = q.chunk_id AND c.ordinal >= {QUANTUM}"
    )
    op.execute("CREATE INDEX embedding_queue_fair ON embedding_queue (model_id, round, chunk_id)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS embedding_queue_fair")
    op.execute("ALTER TABLE embedding_queue DROP COLUMN IF EXISTS round")
