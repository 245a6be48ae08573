"""The backend choice before the workers start, and what `docpipe doctor` reports, without measuring."""

from __future__ import annotations

import json
from pathlib import Path

from docpipe.config import EmbedConfig, Settings
from docpipe.embed import autoselect
from docpipe.embed.prepare import backend_report, decision_file, needs_choice


def settings_with_cache(cache: Path, backend: str = "auto") -> Settings:
    return Settings(model_cache=cache, embed=EmbedConfig(backend=backend))


def test_a_choice_is_needed_once_per_machine_cache(tmp_path: Path) -> None:
    settings = settings_with_cache(tmp_path / "cache")
    assert needs_choice(settings)
    assert not needs_choice(settings_with_cache(tmp_path / "cache", backend="onnx-int8"))  # nothing to choose

    path = decision_file(settings)
    assert path.parent == tmp_path / "cache" / autoselect.DECISION_DIR
    path.parent.mkdir(parents=True)
    measured = {"onnx-int8": {"texts_per_s": 50.0, "mean_cosine": 0.993, "min_cosine": 0.98, "passed": True}}
    path.write_text(json.dumps({"backend": "onnx-int8", "measured": measured, "sample": {"mean_tokens": 200}}))
    assert not needs_choice(settings)
    assert not needs_choice(settings.model_copy(update={"data_dir": tmp_path / "another-stack"}))


def test_doctor_report_names_flags_choice_rates_and_cache(tmp_path: Path) -> None:
    settings = settings_with_cache(tmp_path / "cache")
    report = backend_report(settings)
    assert report["chosen_backend"] is None and report["cache_dir"] == str(tmp_path / "cache")
    assert "avx2" in report["cpu_flags"] and report["cores"] >= 1

    path = decision_file(settings)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"backend": "torch-fp32", "measured": {"torch-fp32": {"texts_per_s": 20.0}}}))
    report = backend_report(settings)
    assert report["chosen_backend"] == "torch-fp32"
    assert report["measured"]["torch-fp32"]["texts_per_s"] == 20.0
    assert report["decision_file"] == str(path)
