"""Page ranges of long PDFs, parsed by separate tasks and joined before chunking.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE document_parts (
            document_id  bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            part         integer NOT NULL,
            attempt      integer NOT NULL,  -- the document attempt that split it (fencing token)
            page_start   integer NOT NULL,
            page_end     integer NOT NULL,
            blocks       jsonb,             -- parsed blocks; NULL until the part is parsed
            PRIMARY KEY (document_id, part)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS document_parts")
