"""docker-compose's Postgres init script (migrations/initdb) run against a real, fresh server.

No Docker here: the script runs as the image would run it (the superuser's psql, the documented
environment) against an embedded Postgres; the app role it makes must run the migrations and be
refused what only a superuser may do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "migrations" / "initdb" / "10-docpipe-role.sh"


@pytest.fixture
def fresh_pg(tmp_path: Path):
    from docpipe.services import EmbeddedPostgres, free_port

    pg = EmbeddedPostgres(tmp_path / "data", free_port())
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def test_the_init_script_makes_a_non_superuser_owner_that_can_migrate(fresh_pg, tmp_path: Path) -> None:
    from docpipe.db import migrate

    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    admin = urlsplit(fresh_pg.admin_url)
    env = {
        "PATH": f"{Path(psql).parent}:/usr/bin:/bin",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(admin.port),
        "PGPASSWORD": admin.password or "",
        "POSTGRES_USER": admin.username or "",
        "DOCPIPE_DB_USER": "compose_app",
        "DOCPIPE_DB": "compose_db",
        "DOCPIPE_DB_PASSWORD": "app secret with 'quotes'",
    }
    done = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "app secret" not in done.stdout + done.stderr

    app = f"postgresql://compose_app:{quote(env['DOCPIPE_DB_PASSWORD'], safe='')}@127.0.0.1:{admin.port}/compose_db"
    migrate(app.replace("postgresql://", "postgresql+psycopg://"))  # every migration, as the app role
    with psycopg.connect(app, autocommit=True) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        assert role == (False, False, False, False, False)
        assert conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'compose_db'"
        ).fetchone() == ("compose_app",)
        preloaded = conn.execute("SELECT count(*) FROM pg_settings WHERE name = 'hnsw.ef_search'").fetchone()
        assert preloaded == (1,)  # pgvector's library is loaded at connect: its settings exist for this role
        assert conn.execute("SELECT count(*) FROM documents").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(fresh_pg.admin_url)  # the superuser's start-up password no longer opens it
    assert os.environ.get("DOCPIPE_DB_PASSWORD") is None  # nothing leaked into this process
