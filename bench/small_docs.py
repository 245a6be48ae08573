"""Many small documents: short abstracts as ``.txt`` files into a fresh stack, against the pure forward."""

from __future__ import annotations

import json
import time
from pathlib import Path

from docpipe.bench.common import Goal, Section, ratio
from docpipe.bench.ingest import (
    ingest_and_wait,
    log_offsets,
    log_tails,
    read_chunk_texts,
    stage_section,
    stage_table,
    worker_stats,
)

SMALL_DOCS_GOAL = 1.25  # ingest wall ÷ pure forward of the same chunks


def write_small_docs(folder: Path, beir_dir: Path, n: int) -> list[Path]:
    """The first `n` documents of a BEIR corpus as ``<id>.txt`` (title, blank line, text): about 1 kB each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with (beir_dir / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if len(paths) >= n:
                break
            doc = json.loads(line)
            path = folder / f"{doc['_id']}.txt"
            path.write_text(f"{doc.get('title', '')}\n\n{doc['text']}\n", encoding="utf-8")
            paths.append(path)
    return paths


def measure_small_docs(work: Path, beir_dir: Path, *, n: int, model_cache: Path) -> list[Section]:
    """A fresh data dir (the machine cache warm), `n` small files ingested; wall ÷ pure forward, docs/s."""
    from docpipe.bench.harness import running_stack

    paths = write_small_docs(work / "small-docs", beir_dir, n)
    section = Section(
        "small_docs",
        f"{len(paths)} small documents from a fresh data dir",
        "embedder.embed() in this process on the very chunk texts the pipeline stored = 1.0",
    )
    t0 = time.perf_counter()
    with running_stack(work / "small-stack", model_cache=model_cache) as run:
        up_s = time.perf_counter() - t0
        offsets = log_offsets(run)
        _job, line = ingest_and_wait(run.client, paths, "bench-small")
        tails = log_tails(run, offsets)
        texts, tokens, _pages = read_chunk_texts(run.client, "bench-small")
        embedder = run.document_embedder
        embedder.embed(texts[:32])
        f0 = time.perf_counter()
        embedder.embed(texts)
        forward_s = time.perf_counter() - f0
    wall_ratio = ratio(line.final_s, forward_s)
    section.add("documents", len(paths), "", f"{sum(p.stat().st_size for p in paths) / len(paths):.0f} bytes each")
    section.add("chunks", len(texts), "", f"{tokens} tokens")
    section.add("stack start (fresh data dir)", round(up_s, 2), "s", "not part of the ingest wall")
    section.add("ingest wall", round(line.final_s, 2), "s")
    section.add("pure forward", round(forward_s, 2), "s", f"backend {embedder.backend}")
    section.add("ingest ÷ pure forward", round(wall_ratio or 0, 3), "x", f"goal <= {SMALL_DOCS_GOAL}")
    section.add("documents/s", round(len(paths) / line.final_s, 1), "docs/s")
    section.add("chunks/s", round(len(texts) / line.final_s, 1), "chunks/s")
    worker = worker_stats(tails)
    section.data.update(timeline=line.__dict__, embed_worker=worker, backend=embedder.backend)
    stages = stage_section("small_docs_stages", "Where the small-documents wall time went",
                           stage_table(line, worker, forward_s))  # fmt: skip
    section.goals.append(
        Goal(
            "small documents: ingest wall ÷ pure forward",
            wall_ratio,
            SMALL_DOCS_GOAL,
            limited_by=f"parsing done at {line.parsed_s or 0:.1f} s; model busy {worker['forward_s']:.1f} s "
            f"of {line.final_s:.1f} s; {worker['parse_tasks']} parse tasks, {worker['parse_task_s']:.1f} s in them",
        )
    )
    return [section, stages]
