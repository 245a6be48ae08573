"""`docpipe up`: the whole stack on one machine, as child processes.

Postgres+pgvector and a Redis-compatible broker from wheels (unless
``DATABASE_URL``/``REDIS_URL`` point at real servers), the Alembic migrations,
a parse worker, an embed+rerank worker and the sweeper's beat. Children that
die are restarted; SIGINT/SIGTERM stops them all, workers first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from docpipe.config import Settings, settings_env
from docpipe.db import StackInfo, migrate, normalize_pg_url
from docpipe.errors import ConfigError
from docpipe.services import (
    EmbeddedPostgres,
    EmbeddedRedis,
    free_port,
    open_private_log,
    private_dir,
    stop_process,
)

log = logging.getLogger(__name__)

DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 56379
CELERY_APP = "docpipe.workers.app"


@dataclass
class WorkerSpec:
    """One child process of the stack."""

    name: str
    args: list[str]
    metrics_port: int = 0  # Prometheus port of this worker; 0: none
    proc: subprocess.Popen | None = None
    restarts: int = 0


def worker_args(queues: str, *, name: str, pool: str, concurrency: int, loglevel: str = "INFO") -> list[str]:
    """argv of a Celery worker over `queues` (comma-separated)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        "-Q",
        queues,
        "-n",
        f"{name}@%h",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


def default_workers(settings: Settings) -> list[WorkerSpec]:
    cores = len(os.sched_getaffinity(0))
    parse_n = settings.worker.parse_concurrency or cores
    port = settings.worker.metrics_port
    beat_schedule = settings.data_dir / "celerybeat-schedule"
    return [
        WorkerSpec("parse", worker_args("parse", name="parse", pool="prefork", concurrency=parse_n), port),
        # threads: an embed drain and a rerank request run side by side in one process, one model copy each
        WorkerSpec(
            "embed", worker_args("embed,rerank", name="embed", pool="threads", concurrency=2), port + 1 if port else 0
        ),
        WorkerSpec(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                CELERY_APP,
                "beat",
                "-s",
                str(beat_schedule),
                "--loglevel",
                "WARNING",
            ],
        ),
    ]


@dataclass
class Stack:
    """The embedded stack. `start()` returns once every server is up and migrated."""

    settings: Settings
    with_workers: bool = True
    redis_persist: bool = True
    workers: list[WorkerSpec] = field(default_factory=list)
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    database_url: str = ""
    redis_url: str = ""
    prepare_s: float = 0.0  # seconds start() spent choosing the embedding backend (0 when cached)

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    def start(self) -> None:
        """Start everything; files this process creates from now on are private (umask 077):
        the data dir, stack.json (it holds the passwords in its URLs), secrets and logs."""
        os.umask(0o077)
        data = private_dir(self.settings.data_dir)
        previous = StackInfo.read(data)
        if previous is not None and previous.alive() and previous.pid != os.getpid():
            raise ConfigError(f"a docpipe stack (pid {previous.pid}) already runs on {data}; stop it first")
        try:
            with _sigterm_exits():  # a SIGTERM while starting (other shells see the stack early) stops cleanly
                self._start_servers(previous)
                migrate(self.database_url)
                StackInfo(self.database_url, self.redis_url, os.getpid()).write(data)
                if self.with_workers:
                    self.prepare_s = self.prepare_embedding_backend()
                    self.workers = default_workers(self.settings)
                    for spec in self.workers:
                        self._spawn(spec)
                    self.wait_for_workers()
        except BaseException:
            self.stop()
            raise

    def _start_servers(self, previous: StackInfo | None) -> None:
        s = self.settings
        if s.database_url:
            self.database_url = normalize_pg_url(s.database_url)
        else:
            port = _port_of(previous.database_url if previous else None, DEFAULT_PG_PORT)
            self.postgres = EmbeddedPostgres(s.data_dir / "postgres", free_port(port))
            self.postgres.start()
            self.database_url = self.postgres.url
        if s.redis_url:
            self.redis_url = s.redis_url
        else:
            port = _port_of(previous.redis_url if previous else None, DEFAULT_REDIS_PORT)
            self.redis = EmbeddedRedis(s.data_dir / "redis", free_port(port), persist=self.redis_persist)
            self.redis.start()
            self.redis_url = self.redis.url

    def prepare_embedding_backend(self, *, timeout_s: float = 900.0) -> float:
        """Make the `auto` backend choice (export, quantise, measure) in a child before any worker starts.

        Once per machine, model and library versions; later stacks find it in the
        machine-wide cache and skip this. Seconds spent; a failure is logged and
        left to the embed worker, which would then choose on its own.
        """
        from docpipe.embed.prepare import needs_choice

        if not needs_choice(self.settings):
            return 0.0
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log.info("choosing the CPU embedding backend once for this machine (cache: %s)", self.settings.model_cache_dir)
        t0 = time.perf_counter()
        args = [sys.executable, "-m", "docpipe.embed.prepare"]
        with open(self.log_dir / "prepare.log", "ab") as out:
            try:
                code = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=self.child_env(),
                                      timeout=timeout_s, check=False).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                code = "timeout"
        elapsed = time.perf_counter() - t0
        if code != 0:
            log.warning("backend choice failed (%s, see %s); the embed worker will choose", code, out.name)
        else:
            log.info("embedding backend chosen in %.1f s", elapsed)
        return elapsed

    def wait_for_workers(self, *, timeout_s: float = 180.0) -> bool:
        """Until the parse and embed workers answer a ping (the embed worker loads its model first); True if so.

        `start()` then means ready: the first ingest does not wait for model loading.
        """
        from docpipe.workers.celery_app import make_app

        names = {f"{spec.name}@" for spec in self.workers if spec.name in ("parse", "embed")}
        app = make_app(self.settings.model_copy(update={"redis_url": self.redis_url}))
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if any(w.proc is not None and w.proc.poll() is not None for w in self.workers):
                    break  # a child died: the supervisor restarts it; do not wait here
                try:
                    replies = app.control.ping(timeout=1.0) or []
                except Exception as exc:  # broker still settling: ask again
                    log.debug("worker ping failed: %s", exc)
                    time.sleep(0.5)
                    continue
                answered = {name.split("@")[0] + "@" for reply in replies for name in reply}
                if names <= answered:
                    return True
        finally:
            app.close()
        log.warning("workers not ready after %.0f s; see %s", timeout_s, self.log_dir)
        return False

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        env.update(DATABASE_URL=self.database_url, REDIS_URL=self.redis_url, PYTHONUNBUFFERED="1")
        return env

    def _spawn(self, spec: WorkerSpec) -> None:
        private_dir(self.log_dir)
        env = self.child_env()
        env["DOCPIPE_WORKER__METRICS_PORT"] = str(spec.metrics_port)
        if spec.metrics_port:
            env.update(fresh_metrics_env(self.settings.data_dir / "metrics" / spec.name))
        with open_private_log(self.log_dir / f"{spec.name}.log") as out:
            spec.proc = subprocess.Popen(
                spec.args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        log.info("started %s worker (pid %s)", spec.name, spec.proc.pid)

    def worker(self, name: str) -> WorkerSpec:
        return next(w for w in self.workers if w.name == name)

    def supervise_once(self) -> list[str]:
        """Restart children that died; returns their names."""
        dead = [w for w in self.workers if w.proc is not None and w.proc.poll() is not None]
        for spec in dead:
            log.warning("%s worker exited with %s; restarting", spec.name, spec.proc.returncode)
            spec.restarts += 1
            self._spawn(spec)
        return [w.name for w in dead]

    def run_forever(self, *, poll_s: float = 1.0) -> None:
        """Supervise until SIGINT/SIGTERM, then stop everything."""
        stopping = False

        def _stop(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stopping:
                self.supervise_once()
                time.sleep(poll_s)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self) -> None:
        """Workers first (warm shutdown lets running tasks finish), then broker and database."""
        for spec in self.workers:
            if spec.proc is not None and spec.proc.poll() is None:
                spec.proc.send_signal(signal.SIGTERM)
        for spec in self.workers:
            if spec.proc is not None:
                stop_process(spec.proc, timeout_s=30)
        info = StackInfo.read(self.settings.data_dir)
        if info is not None and info.pid == os.getpid():
            (self.settings.data_dir / "stack.json").unlink(missing_ok=True)
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit(0) inside the block (main thread only), so the caller's cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    old = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def fresh_metrics_env(path: Path) -> dict[str, str]:
    """Environment for a worker about to start: an empty Prometheus multiprocess directory of its own.

    Files of an earlier run would add to the new counts, so the directory is emptied first.
    """
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return {"PROMETHEUS_MULTIPROC_DIR": str(path)}


def _port_of(url: str | None, default: int) -> int:
    """The port in a previous run's URL (so clients' saved URLs stay valid), else `default`."""
    if url:
        from sqlalchemy.engine import make_url

        port = make_url(url.replace("redis://", "postgresql://")).port
        if port:
            return int(port)
    return default
