"""Initial schema: collections, documents, chunks, embeddings, the embed queue, users' SQL.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE embedding_models (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    dim         integer NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE collections (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    model_id    integer NOT NULL REFERENCES embedding_models (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE documents (
    id             bigserial PRIMARY KEY,
    collection_id  integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    source         text NOT NULL,
    sha256         bytea NOT NULL CHECK (length(sha256) = 32),
    media_type     text NOT NULL,
    size_bytes     bigint NOT NULL,
    content        bytea NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}',
    state          text NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'parsing', 'embedding', 'ready', 'failed')),
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text,
    page_count     integer,
    chunk_count    integer,
    lease_until    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection_id, sha256)
);
-- PDFs and zips are compressed already: store them as they are.
ALTER TABLE documents ALTER COLUMN content SET STORAGE EXTERNAL;
CREATE INDEX documents_active ON documents (state, updated_at)
    WHERE state IN ('queued', 'parsing', 'embedding');
CREATE INDEX documents_metadata ON documents USING gin (metadata jsonb_path_ops);

CREATE TABLE chunks (
    id            bigserial PRIMARY KEY,
    document_id   bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal       integer NOT NULL,
    text          text NOT NULL,
    token_count   integer NOT NULL,
    page_start    integer NOT NULL,
    page_end      integer NOT NULL,
    heading_path  text[] NOT NULL DEFAULT '{}',
    tsv           tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);

-- One vector per (chunk, model). The column has no fixed dimension so several
-- models live side by side; each model gets a partial HNSW index on a cast
-- expression (created when the model is registered).
CREATE TABLE embeddings (
    chunk_id   bigint NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
    model_id   integer NOT NULL REFERENCES embedding_models (id),
    embedding  vector NOT NULL,
    PRIMARY KEY (chunk_id, model_id)
);

-- Chunks waiting for a vector. The embed worker claims rows with
-- FOR UPDATE SKIP LOCKED and a lease; a row leaves only with its vector.
CREATE TABLE embedding_queue (
    chunk_id     bigint NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
    model_id     integer NOT NULL REFERENCES embedding_models (id),
    document_id  bigint NOT NULL,
    token_count  integer NOT NULL,
    lease_until  timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (model_id, chunk_id)
);
CREATE INDEX embedding_queue_document ON embedding_queue (document_id);

-- What SQL users query: one row per embedded chunk of a collection's active model.
CREATE VIEW docpipe_chunks AS
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
       e.embedding
FROM chunks ch
JOIN documents d        ON d.id = ch.document_id
JOIN collections c      ON c.id = d.collection_id
JOIN embedding_models m ON m.id = c.model_id
JOIN embeddings e       ON e.chunk_id = ch.id AND e.model_id = c.model_id;

-- Approximate nearest neighbours through the model's HNSW index:
--   SELECT * FROM docpipe_search('[0.1, ...]'::vector, 'default', 10);
CREATE FUNCTION docpipe_search(query vector, collection_name text, k integer DEFAULT 10,
                               metadata_filter jsonb DEFAULT NULL)
RETURNS TABLE (chunk_id bigint, document_id bigint, source text, page_start integer,
               page_end integer, heading_path text[], text text, distance double precision)
LANGUAGE plpgsql STABLE
SET hnsw.iterative_scan = 'relaxed_order'
AS $fn$
DECLARE
    coll_id integer;
    mid     integer;
    mdim    integer;
BEGIN
    SELECT c.id, m.id, m.dim INTO coll_id, mid, mdim
    FROM collections c JOIN embedding_models m ON m.id = c.model_id
    WHERE c.name = collection_name;
    IF mid IS NULL THEN
        RAISE EXCEPTION 'unknown collection: %', collection_name USING ERRCODE = 'no_data_found';
    END IF;
    IF vector_dims(query) <> mdim THEN
        RAISE EXCEPTION 'query has % dimensions, collection % expects %',
            vector_dims(query), collection_name, mdim USING ERRCODE = 'data_exception';
    END IF;
    PERFORM set_config('hnsw.ef_search', greatest(40, least(1000, k * 2))::text, true);
    -- The dimension and model id are integers read above; the query, k and filter are bound.
    RETURN QUERY EXECUTE format($q$
        SELECT s.chunk_id, s.document_id, s.source, s.page_start, s.page_end,
               s.heading_path, s.text, s.distance
        FROM (
            SELECT ch.id AS chunk_id, d.id AS document_id, d.source, ch.page_start, ch.page_end,
                   ch.heading_path, ch.text,
                   (e.embedding::vector(%1$s) <=> $1::vector(%1$s))::double precision AS distance
            FROM embeddings e
            JOIN chunks ch   ON ch.id = e.chunk_id
            JOIN documents d ON d.id = ch.document_id
            WHERE e.model_id = %2$s AND d.collection_id = $3
              AND ($4::jsonb IS NULL OR d.metadata @> $4::jsonb)
            ORDER BY e.embedding::vector(%1$s) <=> $1::vector(%1$s)
            LIMIT $2
        ) s ORDER BY s.distance $q$, mdim, mid)
    USING query, k, coll_id, metadata_filter;
END
$fn$;

-- Full-text candidates for hybrid search (simple dictionary: language-neutral).
-- Any query word matches; ts_rank_cd ranks chunks with more and closer matches first.
CREATE FUNCTION docpipe_text_search(query_text text, collection_name text, k integer DEFAULT 10,
                                    metadata_filter jsonb DEFAULT NULL)
RETURNS TABLE (chunk_id bigint, rank real)
LANGUAGE sql STABLE
AS $fn$
    SELECT ch.id, ts_rank_cd(ch.tsv, q) AS rank
    FROM chunks ch
    JOIN documents d   ON d.id = ch.document_id
    JOIN collections c ON c.id = d.collection_id,
         -- any of the words (OR), so natural-language queries find partial matches; rank orders them
         CAST(nullif(replace(CAST(plainto_tsquery('simple', query_text) AS text), '&', '|'), '') AS tsquery) q
    WHERE c.name = collection_name AND ch.tsv @@ q
      AND (metadata_filter IS NULL OR d.metadata @> metadata_filter)
    ORDER BY rank DESC, ch.id
    LIMIT k
$fn$;
"""

DROP = """
DROP FUNCTION IF EXISTS docpipe_text_search(text, text, integer, jsonb);
DROP FUNCTION IF EXISTS docpipe_search(vector, text, integer, jsonb);
DROP VIEW IF EXISTS docpipe_chunks;
DROP TABLE IF EXISTS embedding_queue, embeddings, chunks, documents, collections, embedding_models;
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    op.execute(DROP)
