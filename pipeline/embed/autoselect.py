"""Pick the fastest CPU backend that keeps quality, once per model and machine.

Each candidate embeds a small fixed sample (64 short texts, under a second
per run, best of two runs taken in turn); those whose mean cosine to torch-fp32 is at least 0.99 (min 0.98) compete
on throughput. The decision is cached as JSON, keyed by model, CPU flags and
library versions, so later worker starts skip the measurement.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from docpipe.embed.base import PackedEmbedder
from docpipe.embed.onnx_export import fingerprint, model_slug
from docpipe.embed.pooling import l2_normalize
from docpipe.embed.runtime import cpu_count, cpu_flags, cpu_has_bf16

log = logging.getLogger(__name__)

MIN_MEAN_COSINE = 0.99  # to torch-fp32, over the sample
MIN_COSINE = 0.98  # worst single text of the sample
SPEED_TOLERANCE = 0.10  # a more faithful backend this close to the fastest wins
DECISION_FORMAT = 1  # bump when the sample or the rule changes
ROUNDS = 2  # timed runs per candidate; the best counts

_PARAGRAPHS = (
    "Invoice 2024-0917 covers the quarterly maintenance of the ventilation systems in buildings A and C. "
    "Payment is due within thirty days of receipt; late payments accrue interest at two percent per month. "
    "Please quote the invoice number on every transfer and send questions to the accounts team.",
    "The licensee shall not sublicense, assign or otherwise transfer its rights under this agreement without "
    "the prior written consent of the licensor. Any attempted assignment in violation of this section is void. "
    "This agreement is governed by the laws of the State of New York, excluding its conflict-of-laws rules.",
    "We study the convergence of stochastic gradient descent for overparameterized neural networks. Under a "
    "mild smoothness assumption we prove that the training loss decreases linearly, and we show empirically "
    "that wider networks reach lower test error on CIFAR-10 and ImageNet at a fixed compute budget.",
    "To configure the replication slot, set wal_level to logical in postgresql.conf and restart the server. "
    "Then create a publication for the tables you want to stream and point the subscriber at it. Monitor "
    "replication lag with the pg_stat_replication view and alert when it exceeds five minutes.",
    "The city council voted on Tuesday to expand the tram network by twelve kilometres, linking the harbour "
    "district with the university campus. Construction is expected to start next spring and to cost about "
    "340 million euros, two thirds of which will be paid by the regional government.",
    "Patients with type 2 diabetes who received the combination therapy showed a mean reduction in HbA1c of "
    "1.2 percentage points after 24 weeks, compared with 0.6 points in the placebo group. Adverse events were "
    "mostly mild gastrointestinal symptoms that resolved within the first month of treatment.",
    "Die Mitgliederversammlung wird vom Vorstand mindestens einmal im Jahr einberufen. Die Einladung erfolgt "
    "schriftlich unter Angabe der Tagesordnung mit einer Frist von zwei Wochen. Beschlüsse werden mit einfacher "
    "Mehrheit der abgegebenen Stimmen gefasst; Satzungsänderungen bedürfen einer Mehrheit von zwei Dritteln.",
    "Table 3: Results by region. North: revenue 12.4M, growth 8.1%, margin 21%. South: revenue 9.7M, growth "
    "3.5%, margin 17%. East: revenue 15.2M, growth 11.9%, margin 24%. West: revenue 7.3M, growth -1.2%, "
    "margin 12%. Figures are unaudited and in US dollars; growth is year over year.",
)


def sample_texts() -> list[str]:
    """64 fixed texts of 10 to 85 words (about 65 tokens on average): part of one paragraph, maybe of another."""
    texts = []
    for i in range(64):
        first = _PARAGRAPHS[i % len(_PARAGRAPHS)]
        second = _PARAGRAPHS[(i * 3 + 1) % len(_PARAGRAPHS)].split()
        words = first.split()[: 10 + (i * 7) % 40] + second[: (i * 5) % 36]
        texts.append(" ".join(words))
    return texts


def cpu_candidates() -> list[str]:
    """Backends worth measuring on this CPU, the reference (torch-fp32) first."""
    return ["torch-fp32", *(["torch-bf16"] if cpu_has_bf16() else []), "onnx-int8"]


def decision_path(cache_dir: Path, *, name: str, transformer_dir: Path) -> Path:
    """Where the decision for this model on this machine and software lives."""
    import onnxruntime
    import torch

    key = {
        "format": DECISION_FORMAT,
        "model": fingerprint(transformer_dir),
        "cpu": [platform.machine(), sorted(cpu_flags()), cpu_count()],
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / "embed-backend" / f"{model_slug(name)}-{digest}.json"


def choose_cpu_backend(build: Callable[[str], PackedEmbedder], *, decision_file: Path) -> PackedEmbedder:
    """The cached choice if there is one; otherwise measure the candidates, cache and return the winner."""
    cached = _read_decision(decision_file)
    if cached:
        log.info("embedding backend %s (cached decision %s)", cached, decision_file)
        return build(cached)
    texts = sample_texts()
    report: dict[str, dict[str, float | bool | str]] = {}
    loaded = _load_candidates(build, texts, report)
    seconds, vectors = _time_interleaved(loaded, texts)
    reference = vectors["torch-fp32"]
    for backend, elapsed in seconds.items():
        cosines = (vectors[backend] * reference).sum(axis=1)
        passed = bool(cosines.mean() >= MIN_MEAN_COSINE and cosines.min() >= MIN_COSINE)
        report[backend] = {
            "texts_per_s": round(len(texts) / elapsed, 1),
            "mean_cosine": round(float(cosines.mean()), 5),
            "min_cosine": round(float(cosines.min()), 5),
            "passed": passed,
        }
    best = pick_backend(report)
    log.info("embedding backend auto-selected: %s; measured %s", best, report)
    _write_decision(decision_file, {"backend": best, "measured": report, "created": time.time()})
    return loaded[best]


def pick_backend(report: dict[str, dict]) -> str:
    """The most faithful backend among those that passed and run within `SPEED_TOLERANCE` of the fastest.

    Timings on a shared machine wobble by tens of percent, and a cached choice
    lasts; a near-tie is not worth int8's lower fidelity (or batch-dependent vectors).
    """
    passed = {name: r for name, r in report.items() if r.get("passed")}
    if not passed:
        return "torch-fp32"
    fastest = max(r["texts_per_s"] for r in passed.values())
    close = [name for name, r in passed.items() if r["texts_per_s"] >= (1 - SPEED_TOLERANCE) * fastest]
    return max(close, key=lambda name: (passed[name]["mean_cosine"], passed[name]["texts_per_s"]))


def _load_candidates(
    build: Callable[[str], PackedEmbedder], texts: list[str], report: dict[str, dict[str, float | bool | str]]
) -> dict[str, PackedEmbedder]:
    """Each candidate built and warmed up; a failing one is reported and skipped (the reference must work)."""
    loaded: dict[str, PackedEmbedder] = {}
    for backend in cpu_candidates():
        try:
            embedder = build(backend)
            embedder.embed(texts[:4])
        except Exception as exc:
            if not loaded:
                raise
            log.warning("embedding backend %s unavailable: %s", backend, exc)
            report[backend] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            loaded[backend] = embedder
    return loaded


def _time_interleaved(
    loaded: dict[str, PackedEmbedder], texts: list[str]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Best wall seconds of ``ROUNDS`` runs per candidate, run in turn so that load from other
    processes hits all of them alike; and each candidate's unit-normalized vectors."""
    seconds = dict.fromkeys(loaded, float("inf"))
    vectors: dict[str, np.ndarray] = {}
    for _ in range(ROUNDS):
        for backend, embedder in loaded.items():
            start = time.perf_counter()
            vectors[backend] = l2_normalize(embedder.embed(texts))
            seconds[backend] = min(seconds[backend], time.perf_counter() - start)
    return seconds, vectors


def _read_decision(path: Path) -> str | None:
    try:
        backend = json.loads(path.read_text(encoding="utf-8"))["backend"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable backend decision %s: %s", path, exc)
        return None
    return backend if backend in cpu_candidates() else None


def _write_decision(path: Path, decision: dict) -> None:
    """Write-then-rename so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(decision, indent=2), encoding="utf-8")
    os.replace(tmp, path)
