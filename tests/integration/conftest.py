"""A bare migrated Postgres (no workers) for store-level tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory):
    from docpipe.db import migrate
    from docpipe.services import EmbeddedPostgres, free_port

    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", free_port())
    pg.start()
    try:
        migrate(pg.url)
        yield pg.url
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def sessions(pg_url: str):
    from docpipe.db import make_engine, make_sessionmaker

    engine = make_engine(pg_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def faults(sessions):
    """`faults(table, row_id, times, state=None)`: the next `times` writes of that row raise admin_shutdown
    (`tests.db_faults`)."""
    from tests import db_faults

    db_faults.install(sessions)
    yield lambda *args, **kw: db_faults.inject(sessions, *args, **kw)
    db_faults.uninstall(sessions)
