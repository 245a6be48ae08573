#!/bin/sh
# Postgres image init script (docker-compose.yml mounts this folder at /docker-entrypoint-initdb.d):
# runs once, as the image's superuser ($POSTGRES_USER) over the container's local socket, when the
# data volume is first initialised. The same layout as the embedded stack (pipeline/services.py):
#
# - role $DOCPIPE_DB_USER (docpipe): LOGIN, not a superuser, no CREATEDB, CREATEROLE, REPLICATION or
#   BYPASSRLS, password $DOCPIPE_DB_PASSWORD; it owns database $DOCPIPE_DB (docpipe) and its schema
#   `public`, and the migrations run as it;
# - the superuser creates pgvector's extension and preloads its library for the database (its
#   hnsw.* settings exist for a non-superuser only then);
# - the superuser's password (the image needs one to start) is replaced by a random one that is
#   never stored: administer with `docker compose exec postgres psql -U postgres` (local socket).
#
# Values are read inside psql (\getenv): no password is on a command line.
set -eu
: "${DOCPIPE_DB_PASSWORD:?set DOCPIPE_DB_PASSWORD (the app role's password)}"
export DOCPIPE_DB_USER="${DOCPIPE_DB_USER:-docpipe}" DOCPIPE_DB="${DOCPIPE_DB:-docpipe}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv app_user DOCPIPE_DB_USER
\getenv app_password DOCPIPE_DB_PASSWORD
\getenv app_db DOCPIPE_DB
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %L',
              :'app_user', :'app_password') \gexec
CREATE DATABASE :"app_db" OWNER :"app_user";
ALTER DATABASE :"app_db" SET session_preload_libraries = 'vector';
\connect :"app_db"
ALTER SCHEMA public OWNER TO :"app_user";
CREATE EXTENSION IF NOT EXISTS vector;
DO $$ BEGIN
  EXECUTE format('ALTER ROLE %I PASSWORD %L', current_user, gen_random_uuid()::text || gen_random_uuid()::text);
END $$;
SQL
