"""Measurement 1: each docpipe embedding backend against sentence-transformers on the same real chunks."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from docpipe.bench.common import Section, ratio
from docpipe.config import Settings

log = logging.getLogger(__name__)

ST_BATCH_SIZE = 32  # sentence-transformers' default
WARMUP_TEXTS = 32  # texts embedded once per model before timing (allocations, kernel selection)
MIN_MEAN_COSINE = 0.99  # what docpipe's `auto` also asks of a backend


def candidate_backends(device: str) -> list[str]:
    """docpipe's backends worth timing here: bf16 only where the CPU multiplies bf16 natively."""
    from docpipe.embed.runtime import cpu_has_bf16

    names = ["torch-fp32"]
    if device == "cuda" or cpu_has_bf16():
        names.append("torch-bf16")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return names
    if device != "cpu":
        return [*names, "onnx"]
    from docpipe.embed.autoselect import cpu_candidates

    return [*names, "onnx", "onnx-int8", *(b for b in cpu_candidates() if b.startswith("openvino"))]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def measure_embedding(texts: Sequence[str], *, settings: Settings, repeats: int) -> Section:
    """Throughput ratio to `SentenceTransformer.encode(batch_size=32)` fp32 and cosine to its vectors."""
    from docpipe.embed import load_embedder, resolve_model_dir
    from docpipe.embed.runtime import resolve_device

    section = Section(
        "embedding",
        "Embedding backends vs sentence-transformers",
        f"SentenceTransformer.encode(batch_size={ST_BATCH_SIZE}) fp32 on the same {len(texts)} chunks = 1.0",
    )
    texts = list(texts)
    device = resolve_device(settings.embed.device)
    model_dir = resolve_model_dir(settings.embed.model, cache_dir=settings.model_cache_dir)
    runners: dict[str, Callable[[], np.ndarray]] = {}
    load_s: dict[str, float] = {}

    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    st = SentenceTransformer(str(model_dir), device=device)
    load_s["sentence-transformers"] = time.perf_counter() - t0
    runners["sentence-transformers"] = lambda: st.encode(texts, batch_size=ST_BATCH_SIZE, convert_to_numpy=True)
    st.encode(texts[:WARMUP_TEXTS], batch_size=ST_BATCH_SIZE)

    embedders = {}
    for backend in candidate_backends(device):
        t0 = time.perf_counter()
        try:
            embedders[backend] = load_embedder(
                settings.embed.model_copy(update={"backend": backend}), cache_dir=settings.model_cache_dir
            )
        except Exception as exc:  # a backend this machine cannot run is a finding, not a crash
            section.notes.append(f"{backend}: not measured ({type(exc).__name__}: {exc})")
            continue
        load_s[backend] = time.perf_counter() - t0
        embedders[backend].embed(texts[:WARMUP_TEXTS])
        runners[backend] = lambda e=embedders[backend]: e.embed(texts)

    best: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(max(1, repeats)):  # round robin: a burst of noise hits one repeat, not one backend
        for name, run in runners.items():
            t0 = time.perf_counter()
            vectors[name] = np.asarray(run(), dtype=np.float32)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)

    any_embedder = next(iter(embedders.values()), None)
    tokens = _content_tokens(any_embedder, texts) if any_embedder is not None else None
    ref = vectors["sentence-transformers"]
    section.add("chunks", len(texts))
    if tokens is not None:
        section.add("tokens (truncated at the model limit)", tokens)
    section.add(
        "sentence-transformers time",
        round(best["sentence-transformers"], 3),
        "s",
        f"best of {repeats}; load {load_s['sentence-transformers']:.1f} s",
    )
    section.add("sentence-transformers throughput", round(len(texts) / best["sentence-transformers"], 1), "chunks/s")
    section.data["seconds"] = best
    section.data["load_s"] = load_s
    section.data["cosine"] = {}
    fastest_ok: tuple[str, float] | None = None
    for name in embedders:
        if name not in best:
            continue
        cos = row_cosines(vectors[name], ref)
        speedup = ratio(best["sentence-transformers"], best[name])
        section.data["cosine"][name] = {"mean": float(cos.mean()), "min": float(cos.min())}
        section.add(
            f"{name} throughput ratio",
            round(speedup or 0, 3),
            "x",
            f"{len(texts) / best[name]:.1f} chunks/s; load {load_s[name]:.1f} s",
        )
        section.add(f"{name} cosine to ST mean/min", f"{cos.mean():.5f} / {cos.min():.5f}")
        if cos.mean() >= MIN_MEAN_COSINE and (fastest_ok is None or best[name] < fastest_ok[1]):
            fastest_ok = (name, best[name])
    if tokens is not None:
        section.data["tokens_per_s"] = {n: tokens / s for n, s in best.items()}
    if fastest_ok is not None:
        section.data["fastest_ok"] = fastest_ok[0]
        section.notes.append(f"fastest backend with mean cosine >= {MIN_MEAN_COSINE}: {fastest_ok[0]}")
    runners.clear()
    embedders.clear()
    gc.collect()
    return section


def _content_tokens(embedder, texts: Sequence[str]) -> int:
    """Tokens the model sees: content plus special tokens, truncated at its limit."""
    limit = embedder.max_tokens
    special = getattr(embedder, "special_tokens", 2)  # [CLS] and [SEP] for BERT-like models
    return sum(min(n + special, limit) for n in embedder.count_tokens(texts))
