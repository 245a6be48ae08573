"""Finding the database and broker, and opening SQLAlchemy engines.

URLs come from the settings (``DATABASE_URL``/``REDIS_URL``) or, when those are
unset, from the ``stack.json`` that a running ``docpipe up`` writes into its
data dir, so commands in another shell find the stack with no flags.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from docpipe.config import Settings
from docpipe.errors import ConfigError

STACK_FILE = "stack.json"


@dataclass
class StackInfo:
    """What `docpipe up` serves; written to <data_dir>/stack.json while it runs."""

    database_url: str
    redis_url: str
    pid: int

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def write(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".{STACK_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(data_dir / STACK_FILE)

    @classmethod
    def read(cls, data_dir: Path) -> StackInfo | None:
        try:
            return cls(**json.loads((data_dir / STACK_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def normalize_pg_url(url: str) -> str:
    """Use the psycopg 3 driver for plain ``postgres://`` / ``postgresql://`` URLs."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def _running_stack(settings: Settings) -> StackInfo | None:
    info = StackInfo.read(settings.data_dir)
    return info if info is not None and info.alive() else None


def resolve_database_url(settings: Settings | None = None) -> str:
    settings = settings or Settings()
    if settings.database_url:
        return normalize_pg_url(settings.database_url)
    if info := _running_stack(settings):
        return info.database_url
    raise ConfigError(
        f"no database: set DATABASE_URL, or start the embedded stack with `docpipe up` "
        f"(looked for {settings.data_dir / STACK_FILE})"
    )


def resolve_redis_url(settings: Settings | None = None) -> str:
    settings = settings or Settings()
    if settings.redis_url:
        return settings.redis_url
    if info := _running_stack(settings):
        return info.redis_url
    raise ConfigError(
        f"no broker: set REDIS_URL, or start the embedded stack with `docpipe up` "
        f"(looked for {settings.data_dir / STACK_FILE})"
    )


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine that survives server restarts: stale pooled connections are tested and replaced."""
    return create_engine(normalize_pg_url(url), pool_size=pool_size, pool_pre_ping=True, pool_recycle=1800)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(url: str) -> None:
    """Apply every Alembic migration (idempotent; concurrent callers serialise on a lock)."""
    from alembic import command
    from alembic.config import Config

    import docpipe.migrations

    ini = Path(docpipe.migrations.__file__).resolve().parent / "alembic.ini"
    cfg = Config(str(ini))
    cfg.attributes["database_url"] = normalize_pg_url(url)
    command.upgrade(cfg, "head")
