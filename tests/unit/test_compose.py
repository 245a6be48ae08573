"""docker-compose.yml is checked by Docker Compose itself (no engine needed) and by structure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SECRETS = {"POSTGRES_PASSWORD": "pw-from-env", "REDIS_PASSWORD": "redis-pw-from-env"}


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (apt install docker-compose)")
    return subprocess.run([exe, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, check=False)


def test_compose_file_is_valid_and_resolves_passwords_from_env() -> None:
    result = compose_config({"PATH": "/usr/bin:/bin", **SECRETS})
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw-from-env"
    assert "pw-from-env" in resolved["services"]["parse"]["environment"]["DATABASE_URL"]


def test_compose_refuses_to_start_without_passwords() -> None:
    result = compose_config({"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_compose_services_health_and_ordering() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector")
    assert services["redis"]["image"].startswith("redis")
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), "published beyond localhost"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for worker in ("parse", "embed", "beat"):
        assert services[worker]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu = services["embed"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["embed-cpu"]["environment"]["DOCPIPE_EMBED__DEVICE"] == "cpu"
    assert "embed,rerank" in services["embed"]["command"]
    assert "parse" in services["parse"]["command"]


def test_no_password_on_a_command_line_and_data_writable() -> None:
    """`ps` in the Redis container shows no password; the image's /data belongs to its user."""
    spec = yaml.safe_load(COMPOSE.read_text())
    redis = spec["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--requirepass" not in command and "${REDIS_PASSWORD" not in command
    assert "redis-server /tmp/redis.conf" in command
    assert "-a " not in " ".join(redis["healthcheck"]["test"])
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "chown docpipe:docpipe /data" in dockerfile
    assert dockerfile.index("chown docpipe:docpipe /data") < dockerfile.index("USER docpipe")


def test_workers_connect_as_a_role_that_is_not_the_image_superuser() -> None:
    """The image's superuser is `postgres`; `docpipe` is made by the init script (tested in
    tests/integration/test_compose_initdb.py) and is what DATABASE_URL names."""
    result = compose_config({"PATH": "/usr/bin:/bin", **SECRETS})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] == "postgres"
    assert postgres["environment"]["DOCPIPE_DB_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in postgres["volumes"]]
    init = [m for m in mounts if "/docker-entrypoint-initdb.d" in m]
    assert len(init) == 1 and Path(init[0].split(":")[0]).resolve() == (REPO / "migrations" / "initdb").resolve()
    assert (REPO / "migrations" / "initdb" / "10-docpipe-role.sh").stat().st_mode & 0o111
    assert services["parse"]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://docpipe:")
    assert "-h 127.0.0.1 -U docpipe" in " ".join(postgres["healthcheck"]["test"])
