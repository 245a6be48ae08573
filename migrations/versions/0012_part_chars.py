"""Characters parsed per page range, so a split document's total is bounded like a whole one's.

- `document_parts.chars bigint`: characters of text in the part's blocks (NULL until parsed). The
  part that would take a document's sum past `parse.max_chars` fails the document, naming the limit:
  a PDF whose thousands of pages repeat one large content stream no longer passes range by range.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE document_parts ADD COLUMN chars bigint")
    op.execute(
        "UPDATE document_parts p SET chars = (SELECT coalesce(sum(length(b ->> 0)), 0) "
        "FROM jsonb_array_elements(p.blocks) b) WHERE p.blocks IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE document_parts DROP COLUMN IF EXISTS chars")
