"""Claim tokens: which task holds a document's parse claim, so that task's retry can resume it.

- `documents.claimed_by text`: the token (the Celery task id, the same for every retry and
  redelivery of one message) of the claim that last took the document; NULL for claims made
  without one. A claim whose token matches may take the document back before its lease expires
  (`states.claim_for_parse`): a task that lost its database connection mid-save retries at once
  instead of waiting out the lease. `attempts` stays the fencing token: resuming counts as an attempt.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE documents ADD COLUMN claimed_by text")


def downgrade() -> None:
    op.execute("ALTER TABLE documents DROP COLUMN IF EXISTS claimed_by")
