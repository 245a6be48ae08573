"""Document lifecycle: identity by source key, versions, only `ready` versions searchable, delete, problems.

- A document row is one version of its key (`source`: the path as given, or
  the caller's key) in a collection: unique (collection, source, sha256)
  replaces unique (collection, sha256). Same bytes under the same key stay a
  no-op; changed bytes are a new version, live once `ready` (see
  `pipeline/states.py`).
- `docpipe_chunks`, `docpipe_search` and `docpipe_text_search` (their 0005
  definitions) return chunks of `ready` versions only, so a version being
  parsed or embedded never shows next to the one it replaces.
- `docpipe_delete(...)`: delete documents by ids, key pattern (LIKE) and
  metadata filter in one transaction; chunks, vectors, postings, queue rows
  and page-range parts go with them (cascades and the 0005 triggers).
- `docpipe_problems`: failed documents and ready ones without searchable text, with the reason.
- `collections.chunking`: the chunker settings recorded when the collection
  was created (JSON of `TokenChunker`); every worker chunks the collection
  with them. NULL for collections created earlier: workers use their own.
- `collections.next_model_id`: the model a reindex is embedding the
  collection's chunks with; one transaction makes it `model_id` once every
  chunk has its vector (searches use `model_id` until then).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from importlib import import_module

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE collections ADD COLUMN next_model_id integer REFERENCES embedding_models (id)
    CHECK (next_model_id <> model_id);
ALTER TABLE collections ADD COLUMN chunking jsonb;
ALTER TABLE documents DROP CONSTRAINT IF EXISTS documents_collection_id_sha256_key;
ALTER TABLE documents ADD CONSTRAINT documents_version UNIQUE (collection_id, source, sha256);
-- Key prefix and glob (LIKE 'prefix%') lookups for delete and sync.
CREATE INDEX documents_key_pattern ON documents (collection_id, source text_pattern_ops);
-- Documents whose chunks must stay out of search: few at any time (in flight or failed).
CREATE INDEX documents_unsearchable ON documents (collection_id) WHERE state <> 'ready';

CREATE OR REPLACE VIEW docpipe_chunks AS
SELECT ch.id            AS chunk_id,
       c.name           AS collection,
       d.id             AS document_id,
       d.source,
       d.metadata,
       ch.ordinal,
       ch.page_start,
       ch.page_end,
       ch.heading_path,
       ch.text,
       m.name           AS model,
       e.embedding,
       ch.context,
       d.title
FROM chunks ch
JOIN documents d        ON d.id = ch.document_id
JOIN collections c      ON c.id = d.collection_id
JOIN embedding_models m ON m.id = c.model_id
JOIN embeddings e       ON e.chunk_id = ch.id AND e.model_id = c.model_id
WHERE d.state = 'ready';

-- Failed documents and ready ones that produced no searchable text, with the reason:
--   SELECT * FROM docpipe_problems WHERE collection = 'docs';
CREATE VIEW docpipe_problems AS
SELECT c.name AS collection, d.id AS document_id, d.source, d.state,
       CASE WHEN d.state = 'failed' THEN 'failed' ELSE 'no_text' END AS problem,
       d.last_error AS reason, d.attempts, d.updated_at
FROM documents d JOIN collections c ON c.id = d.collection_id
WHERE d.state = 'failed' OR (d.state = 'ready' AND d.chunk_count = 0);

-- Delete documents (every version of their keys) of a collection; every criterion given must hold,
-- and at least one must be given:
--   SELECT * FROM docpipe_delete('docs', key_like => '/srv/share/old/%');
--   SELECT * FROM docpipe_delete('docs', metadata_filter => '{"team": "legal"}');
-- `key_like` is a LIKE pattern on the key (`source`): an exact key, 'prefix%', or a glob turned into LIKE.
CREATE FUNCTION docpipe_delete(collection_name text, document_ids bigint[] DEFAULT NULL, keys text[] DEFAULT NULL,
                               key_like text DEFAULT NULL, metadata_filter jsonb DEFAULT NULL)
RETURNS TABLE (document_id bigint, source text, state text)
LANGUAGE plpgsql VOLATILE
AS $fn$
#variable_conflict use_column
DECLARE
    coll_id integer;
BEGIN
    SELECT c.id INTO coll_id FROM collections c WHERE c.name = collection_name;
    IF coll_id IS NULL THEN
        RAISE EXCEPTION 'unknown collection: %', collection_name USING ERRCODE = 'no_data_found';
    END IF;
    IF document_ids IS NULL AND keys IS NULL AND key_like IS NULL AND metadata_filter IS NULL THEN
        RAISE EXCEPTION 'docpipe_delete needs document_ids, keys, key_like or metadata_filter'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the versions' keys are locked like a replace locks them (pipeline/states.py), in hash order
    PERFORM pg_advisory_xact_lock(3340, h) FROM (
        SELECT DISTINCT hashtext(d.collection_id::text || '/' || d.source) AS h FROM documents d
        WHERE d.collection_id = coll_id
          AND (document_ids IS NULL OR d.id = ANY(document_ids))
          AND (keys IS NULL OR d.source = ANY(keys))
          AND (key_like IS NULL OR d.source LIKE key_like)
          AND (metadata_filter IS NULL OR d.metadata @> metadata_filter)
        ORDER BY h) k;
    RETURN QUERY
    WITH gone AS (
        DELETE FROM documents d
        WHERE d.collection_id = coll_id
          AND (document_ids IS NULL OR d.id = ANY(document_ids))
          AND (keys IS NULL OR d.source = ANY(keys))
          AND (key_like IS NULL OR d.source LIKE key_like)
          AND (metadata_filter IS NULL OR d.metadata @> metadata_filter)
        RETURNING d.id, d.source, d.state
    )
    SELECT g.id, g.source, g.state FROM gone g ORDER BY g.id;
END
$fn$;
"""

DOWNGRADE = r"""
ALTER TABLE collections DROP COLUMN next_model_id, DROP COLUMN chunking;
DROP FUNCTION IF EXISTS docpipe_delete(text, bigint[], text[], text, jsonb);
DROP VIEW IF EXISTS docpipe_problems;
DROP INDEX IF EXISTS documents_unsearchable;
DROP INDEX IF EXISTS documents_key_pattern;
ALTER TABLE documents DROP CONSTRAINT IF EXISTS documents_version;
ALTER TABLE documents ADD CONSTRAINT documents_collection_id_sha256_key UNIQUE (collection_id, sha256);
"""

# 0005's vector search, restricted to ready versions.
SEARCH_FILTER = (
    "            WHERE e.model_id = %2$s AND d.collection_id = $3\n",
    "            WHERE e.model_id = %2$s AND d.collection_id = $3 AND d.state = 'ready'\n",
)

# 0005's BM25, without the postings of versions not yet (or no longer) searchable.
TEXT_FILTER = (
    "    SELECT s.chunk_id, s.score\n    FROM scored s\n    WHERE metadata_filter IS NULL OR EXISTS (",
    "    SELECT s.chunk_id, s.score\n    FROM scored s\n"
    "    WHERE s.chunk_id NOT IN (SELECT ch.id FROM documents d JOIN chunks ch ON ch.document_id = d.id\n"
    "                             WHERE d.collection_id = coll.id AND d.state <> 'ready')\n"
    "      AND (metadata_filter IS NULL OR EXISTS (",
)
TEXT_FILTER_END = (
    "        WHERE ch.id = s.chunk_id AND d.metadata @> metadata_filter)\n    ORDER BY s.score DESC",
    "        WHERE ch.id = s.chunk_id AND d.metadata @> metadata_filter))\n    ORDER BY s.score DESC",
)


def _v0005():
    return import_module("docpipe.migrations.versions.0005_bm25_and_context")


def search_function() -> str:
    """`docpipe_search` as of this revision (later revisions start from this text)."""
    body = _v0005()._search_function(shared_index=True)
    assert SEARCH_FILTER[0] in body
    return body.replace(*SEARCH_FILTER)


def text_search_function() -> str:
    """`docpipe_text_search` as of this revision: 0005's, ready versions only."""
    v5 = _v0005().UPGRADE
    start = v5.index("CREATE FUNCTION docpipe_text_search")
    body = v5[start : v5.index("$fn$;", start) + len("$fn$;")].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    for old, new in (TEXT_FILTER, TEXT_FILTER_END):
        assert old in body, old
        body = body.replace(old, new)
    return body


def _previous_view() -> str:
    v5 = _v0005().UPGRADE
    return v5[v5.index("CREATE OR REPLACE VIEW docpipe_chunks") : v5.index("CREATE TABLE chunk_terms")]


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(search_function())
    op.execute(text_search_function())


def downgrade() -> None:
    op.execute(DOWNGRADE)
    op.execute(_v0005()._search_function(shared_index=True))
    op.execute(text_search_function().replace(*reversed(TEXT_FILTER_END)).replace(*reversed(TEXT_FILTER)))
    op.execute(_previous_view())
