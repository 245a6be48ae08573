"""Full-text candidates: chunks with all query words first (GIN index), any word only to fill up.

Matching any word of a natural-language query ranked the whole collection
(words like "the" are in every chunk under the `simple` dictionary); all-words
matches are selective and use the GIN index; the any-word scan runs only when
they are fewer than `k`, and ranks a bounded number of matches.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION docpipe_text_search(query_text text, collection_name text, k integer DEFAULT 10,
                                               metadata_filter jsonb DEFAULT NULL)
RETURNS TABLE (chunk_id bigint, rank real)
LANGUAGE sql STABLE
AS $fn$
    WITH coll AS (
        SELECT id FROM collections WHERE name = collection_name
    ), all_words AS (
        SELECT ch.id, ts_rank_cd(ch.tsv, q) AS rank
        FROM chunks ch JOIN documents d ON d.id = ch.document_id,
             plainto_tsquery('simple', query_text) q
        WHERE d.collection_id = (SELECT id FROM coll) AND ch.tsv @@ q
          AND (metadata_filter IS NULL OR d.metadata @> metadata_filter)
        ORDER BY rank DESC, ch.id
        LIMIT k
    ), any_word AS (
        -- Ranks at most 2,000 matches: a common word matches most chunks, and ranking them all
        -- cost 150 ms at 100k chunks; these candidates only fill up after the all-words ones.
        SELECT m.id, ts_rank_cd(m.tsv, m.q) / 2 AS rank
        FROM (
            SELECT ch.id, ch.tsv, q
            FROM chunks ch JOIN documents d ON d.id = ch.document_id,
                 CAST(nullif(replace(CAST(plainto_tsquery('simple', query_text) AS text), '&', '|'), '')
                      AS tsquery) q
            WHERE (SELECT count(*) FROM all_words) < k  -- a one-time filter: skipped when all-words filled k
              AND d.collection_id = (SELECT id FROM coll) AND ch.tsv @@ q
              AND (metadata_filter IS NULL OR d.metadata @> metadata_filter)
              AND ch.id NOT IN (SELECT id FROM all_words)
            LIMIT 2000
        ) m
        ORDER BY rank DESC, m.id
        LIMIT k
    )
    SELECT id, rank FROM (
        SELECT id, rank, 0 AS tier FROM all_words
        UNION ALL SELECT id, rank, 1 FROM any_word
    ) s ORDER BY tier, rank DESC, id LIMIT k
$fn$;
"""

PREVIOUS = r"""
CREATE OR REPLACE FUNCTION docpipe_text_search(query_text text, collection_name text, k integer DEFAULT 10,
                                               metadata_filter jsonb DEFAULT NULL)
RETURNS TABLE (chunk_id bigint, rank real)
LANGUAGE sql STABLE
AS $fn$
    SELECT ch.id, ts_rank_cd(ch.tsv, q) AS rank
    FROM chunks ch
    JOIN documents d   ON d.id = ch.document_id
    JOIN collections c ON c.id = d.collection_id,
         CAST(nullif(replace(CAST(plainto_tsquery('simple', query_text) AS text), '&', '|'), '') AS tsquery) q
    WHERE c.name = collection_name AND ch.tsv @@ q
      AND (metadata_filter IS NULL OR d.metadata @> metadata_filter)
    ORDER BY rank DESC, ch.id
    LIMIT k
$fn$;
"""


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(PREVIOUS)
