"""`docpipe up` as a user runs it: a foreground process that serves, is found by other commands, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from docpipe.db import StackInfo


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "docpipe.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_up(env: dict[str, str], data_dir: Path) -> tuple[subprocess.Popen, str]:
    """`docpipe up` started, and what it printed once it was up (its URLs come last, when everything runs)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "docpipe.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 120
    while StackInfo.read(data_dir) is None:
        assert proc.poll() is None, "docpipe up exited early"
        assert time.monotonic() < deadline, "docpipe up did not come up"
        time.sleep(0.2)
    assert proc.stdout is not None
    printed = ""
    while "REDIS_URL=" not in printed:  # start-up is over (workers answer) only once the URLs are printed
        line = proc.stdout.readline()
        assert line, "docpipe up exited before printing its URLs"
        printed += line
    return proc, printed


def stop_up(proc: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    return children


def test_up_serves_other_shells_and_stops_every_child(tmp_path: Path, model_cache: Path, corpus_dir: Path) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DOCPIPE_DATA_DIR=str(data_dir), DOCPIPE_MODEL_CACHE=str(model_cache), DOCPIPE_WORKER__PARSE_CONCURRENCY="1"
    )

    proc, printed = start_up(env, data_dir)
    ingest = cli(env, "ingest", str(corpus_dir / "other" / "lwn-1.html"), "--collection", "up", "--wait")
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout.splitlines()[-1]) == {"ready": 1}
    children = stop_up(proc)
    assert "DATABASE_URL=postgresql+psycopg://docpipe:" in printed and "REDIS_URL=redis://:" in printed  # passwords
    assert len(children) >= 5  # postgres, broker, parse worker, embed worker, beat (and their children)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert StackInfo.read(data_dir) is None
    assert cli(env, "status").returncode == 2  # no stack: a clear error, not a hang

    proc, _ = start_up(env, data_dir)  # the data survives a restart
    try:
        status = json.loads(cli(env, "status", "--json").stdout)
        assert status["up"]["documents"] == {"ready": 1}
    finally:
        stop_up(proc)
