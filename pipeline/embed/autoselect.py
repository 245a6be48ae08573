"""Pick the fastest CPU backend that keeps quality, once per machine and model, before any work.

Each candidate embeds 32 fixed chunk-length texts (about 200 tokens, like
real chunks); the candidates run in turn, ``ROUNDS`` times, so that a burst
of load hits all of them alike. Those whose vectors stay close to torch-fp32
compete on their median rate. A choice changes only on clear evidence: a
challenger must beat the incumbent (the previous decision for this model on
this machine, else the most faithful near-tie) in every round by
``SWITCH_MARGIN``. The decision is cached as JSON in the machine-wide cache,
keyed by model, CPU flags and library versions; `docpipe up` makes it before
the workers start, and `docpipe doctor` shows it.

Queries get their own choice: one short text per call, where a backend's
per-call overhead matters more than its throughput (on an AVX-512 BF16 CPU
torch-bf16 led the chunk batches at 3.8x sentence-transformers but took 12 ms
for one query, against 3 ms for ONNX). The candidates embed ``QUERY_TEXTS``
one at a time in the same interleaved rounds; the fastest faithful one serves
`Client.search`. Mixing is safe: every backend approximates the same fp32
model, and the faithfulness check applies to both choices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Literal

import numpy as np

from docpipe.embed.base import PackedEmbedder
from docpipe.embed.onnx_export import fingerprint, model_slug
from docpipe.embed.openvino_backend import openvino_installed
from docpipe.embed.pooling import l2_normalize
from docpipe.embed.runtime import cpu_count, cpu_flags, cpu_has_bf16

log = logging.getLogger(__name__)

Purpose = Literal["documents", "queries"]  # what an embedder is loaded for: batches of chunks, or one query

# Cosine to torch-fp32 over the sample, a proxy for search quality. Calibrated on all-MiniLM-L6-v2: fused int8
# (mean 0.992, min 0.977 on real chunks) kept nDCG@10 on SciFact within 0.001 and top-10 overlap at 0.91;
# per-tensor int8 weights (mean 0.93) fail.
MIN_MEAN_COSINE = 0.985
MIN_COSINE = 0.95  # worst single text of the sample
SPEED_TOLERANCE = 0.10  # a more faithful backend this close to the fastest wins
SWITCH_MARGIN = 0.10  # a challenger must be this much faster than the incumbent in every round
DECISION_FORMAT = 3  # bump when the sample or the rule changes (3: a query backend is chosen too)
ROUNDS = 3  # timed, interleaved runs per candidate
SAMPLE_TEXTS = 32
DECISION_DIR = "embed-backend"
_KEY_LIBRARIES = ("torch", "onnxruntime", "openvino", "transformers", "tokenizers")

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


QUERY_TEXTS = (  # search queries as users type them: a few words to a sentence
    "how are leases renewed",
    "quarterly revenue growth by region",
    "side effects of the combination therapy",
    "governing law of the license agreement",
    "replication lag monitoring postgres",
    "when does construction of the tram start",
    "convergence of stochastic gradient descent for wide networks",
    "Einladung zur Mitgliederversammlung Frist",
)


def sample_texts() -> list[str]:
    """``SAMPLE_TEXTS`` fixed texts of two to four paragraphs (about 200 tokens on average, like real chunks)."""
    texts = []
    for i in range(SAMPLE_TEXTS):
        paragraphs = [_PARAGRAPHS[(i + k * 3) % len(_PARAGRAPHS)] for k in range(2 + i % 3)]
        words = " ".join(paragraphs).split()
        texts.append(" ".join(words[: 120 + (i * 13) % 60]))
    return texts


def cpu_candidates() -> list[str]:
    """Backends worth measuring on this CPU, the reference (torch-fp32) first."""
    bf16 = cpu_has_bf16()
    openvino = ["openvino-bf16" if bf16 else "openvino"] if openvino_installed() else []
    return ["torch-fp32", *(["torch-bf16"] if bf16 else []), "onnx", "onnx-int8", *openvino]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def decision_key(*, transformer_dir: Path) -> dict:
    """What a decision depends on: the model's files, the CPU and the libraries (read without importing them)."""
    return {
        "format": DECISION_FORMAT,
        "model": fingerprint(transformer_dir),
        "cpu": [platform.machine(), sorted(cpu_flags()), cpu_count()],
        **{lib: _version(lib) for lib in _KEY_LIBRARIES},
    }


def decision_path(cache_dir: Path, *, name: str, transformer_dir: Path) -> Path:
    """Where the decision for this model on this machine and software lives."""
    key = decision_key(transformer_dir=transformer_dir)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / DECISION_DIR / f"{model_slug(name)}-{digest}.json"


def choose_cpu_backend(
    build: Callable[[str], PackedEmbedder],
    *,
    decision_file: Path,
    remeasure: bool = False,
    purpose: Purpose = "documents",
) -> PackedEmbedder:
    """The cached choice for `purpose` if there is one; otherwise measure the candidates, cache both choices
    and return the one for `purpose`."""
    field = "query_backend" if purpose == "queries" else "backend"
    cached = read_decision(decision_file)
    if cached and not remeasure:
        choice = cached.get(field) if cached.get(field) in cpu_candidates() else cached["backend"]
        log.info("embedding backend for %s: %s (cached decision %s)", purpose, choice, decision_file)
        return build(choice)
    texts = sample_texts()
    report: dict[str, dict] = {}
    loaded = _load_candidates(build, texts, report)
    rounds, query_rounds, vectors = _time_interleaved(loaded, texts)
    reference = vectors["torch-fp32"]
    tokens = sum(loaded["torch-fp32"].count_tokens(texts)) / len(texts)
    for backend, seconds in rounds.items():
        cosines = (vectors[backend] * reference).sum(axis=1)
        rates = [round(len(texts) / s, 2) for s in seconds]
        report[backend] = {
            "texts_per_s": round(statistics.median(rates), 2),
            "rounds_texts_per_s": rates,
            "query_ms": round(statistics.median(query_rounds[backend]) * 1000 / len(QUERY_TEXTS), 2),
            "rounds_query_ms": [round(s * 1000 / len(QUERY_TEXTS), 2) for s in query_rounds[backend]],
            "mean_cosine": round(float(cosines.mean()), 5),
            "min_cosine": round(float(cosines.min()), 5),
            "passed": bool(cosines.mean() >= MIN_MEAN_COSINE and cosines.min() >= MIN_COSINE),
        }
    best = pick_backend(report, incumbent=(cached or {}).get("backend") or previous_choice(decision_file))
    query_best = pick_backend(_as_query_rates(report), incumbent=(cached or {}).get("query_backend"))
    log.info("embedding backend auto-selected: %s, for queries %s; measured %s", best, query_best, report)
    decision = {
        "backend": best,
        "query_backend": query_best,
        "measured": report,
        "sample": {"texts": len(texts), "mean_tokens": round(tokens, 1), "rounds": ROUNDS,
                   "query_texts": len(QUERY_TEXTS)},
        "key": decision_key(transformer_dir=loaded["torch-fp32"].st_config.transformer_dir),
        "created": time.time(),
    }  # fmt: skip
    _write_decision(decision_file, decision)
    return loaded[query_best if purpose == "queries" else best]


def _as_query_rates(report: dict[str, dict]) -> dict[str, dict]:
    """The report with single-query calls per second as the rate `pick_backend` compares."""
    return {
        name: {**r, "texts_per_s": 1000 / r["query_ms"], "rounds_texts_per_s": [1000 / m for m in r["rounds_query_ms"]]}
        for name, r in report.items()
        if "query_ms" in r
    }


def pick_backend(report: dict[str, dict], *, incumbent: str | None = None) -> str:
    """The most faithful passing backend within `SPEED_TOLERANCE` of the fastest (median rates),
    unless the incumbent still passes and the newcomer does not beat it in every round by `SWITCH_MARGIN`.

    Timings on a shared machine wobble by tens of percent, and a cached choice
    lasts: a near-tie is not worth int8's lower fidelity, nor a flip-flop.
    """
    passed = {name: r for name, r in report.items() if r.get("passed")}
    if not passed:
        return "torch-fp32"
    fastest = max(r["texts_per_s"] for r in passed.values())
    close = [name for name, r in passed.items() if r["texts_per_s"] >= (1 - SPEED_TOLERANCE) * fastest]
    best = max(close, key=lambda name: (passed[name]["mean_cosine"], passed[name]["texts_per_s"]))
    if incumbent in passed and incumbent != best and not _clearly_faster(passed[best], passed[incumbent]):
        return incumbent
    return best


def _clearly_faster(challenger: dict, incumbent: dict) -> bool:
    """Faster by `SWITCH_MARGIN` in every round (rounds ran interleaved, so each pair saw the same load)."""
    pairs = zip(challenger.get("rounds_texts_per_s", [challenger["texts_per_s"]]),
                incumbent.get("rounds_texts_per_s", [incumbent["texts_per_s"]]), strict=False)  # fmt: skip
    return all(c >= (1 + SWITCH_MARGIN) * i for c, i in pairs)


def previous_choice(decision_file: Path) -> str | None:
    """The backend of the newest other decision for the same model (an older library or format), if any."""
    prefix = decision_file.name.rsplit("-", 1)[0] + "-"
    others = [p for p in decision_file.parent.glob(f"{prefix}*.json") if p != decision_file]
    for path in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        found = read_decision(path)
        if found:
            return found["backend"]
    return None


def _load_candidates(
    build: Callable[[str], PackedEmbedder], texts: list[str], report: dict[str, dict]
) -> dict[str, PackedEmbedder]:
    """Each candidate built and warmed up; a failing one is reported and skipped (the reference must work)."""
    loaded: dict[str, PackedEmbedder] = {}
    for backend in cpu_candidates():
        try:
            embedder = build(backend)
            embedder.embed(texts[:8])
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
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, np.ndarray]]:
    """Per candidate and round (in turn, the order rotating each round): wall seconds to embed `texts` in one
    call, wall seconds to embed ``QUERY_TEXTS`` one per call; and each candidate's unit-normalized vectors."""
    seconds: dict[str, list[float]] = {name: [] for name in loaded}
    query_seconds: dict[str, list[float]] = {name: [] for name in loaded}
    vectors: dict[str, np.ndarray] = {}
    names = list(loaded)
    for r in range(ROUNDS):
        for backend in names[r % len(names) :] + names[: r % len(names)]:
            embedder = loaded[backend]
            start = time.perf_counter()
            vectors[backend] = l2_normalize(embedder.embed(texts))
            seconds[backend].append(time.perf_counter() - start)
            start = time.perf_counter()
            for query in QUERY_TEXTS:
                embedder.embed_query(query)
            query_seconds[backend].append(time.perf_counter() - start)
    return seconds, query_seconds, vectors


def read_decision(path: Path) -> dict | None:
    """A cached decision whose backend this CPU can still run; None when missing or unreadable."""
    try:
        decision = json.loads(path.read_text(encoding="utf-8"))
        backend = decision["backend"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable backend decision %s: %s", path, exc)
        return None
    return decision if backend in cpu_candidates() else None


def _write_decision(path: Path, decision: dict) -> None:
    """Write-then-rename so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(decision, indent=2), encoding="utf-8")
    os.replace(tmp, path)
