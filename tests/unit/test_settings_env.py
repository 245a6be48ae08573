"""Settings reach worker processes through the environment and come back unchanged."""

from __future__ import annotations

import os

import pytest

from docpipe.config import SearchConfig, Settings, WorkerConfig, settings_env


def test_settings_survive_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in [n for n in os.environ if n.startswith("DOCPIPE_") or n in ("DATABASE_URL", "REDIS_URL")]:
        monkeypatch.delenv(name)
    settings = Settings(
        data_dir=tmp_path,
        search=SearchConfig(bm25_per_term=-1, vector_weight=0.6),
        worker=WorkerConfig(lease_s=600),
    )
    env = settings_env(settings)
    assert all(value != "None" for value in env.values())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().model_dump() == settings.model_dump()
