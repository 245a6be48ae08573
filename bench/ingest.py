"""Measurements 2 and 3: end-to-end ingest against a pure model forward, and re-ingest against first ingest."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from docpipe.bench.common import Goal, Section, ratio
from docpipe.bench.harness import RunningStack
from docpipe.bench.rss import RssSampler
from docpipe.chunk_context import embedded_text

E2E_GOAL = 1.10  # steady-state ingest wall ÷ pure forward
REINGEST_GOAL = 0.02  # re-ingest wall ÷ first ingest wall
POLL_S = 0.05  # seconds between state polls while waiting (small, so it does not round the wall time up)
_EMBED_LOG = re.compile(
    r"embedded (\d+) chunks \((\d+) tokens\) in (\d+) batches, ([\d.]+) s, model busy (\d+)%.*?; "
    r"forward ([\d.]+) s, claim ([\d.]+) s, write ([\d.]+) s, idle ([\d.]+) s, index ([\d.]+) s"
)
_PARSE_TASK_LOG = re.compile(r"Task docpipe\.parse(?:_part|_batch)?\[[^\]]*\] succeeded in ([\d.]+)s")
_SWEEP_EMBED = re.compile(r"docpipe\.sweep\[[^\]]*\] succeeded[^\n]*'embed': \['")


@dataclass
class Timeline:
    """When the ingest reached its milestones, in seconds from the `ingest` call."""

    enqueued_s: float = 0.0
    first_ready_s: float | None = None
    parsed_s: float | None = None  # nothing left queued or parsing
    final_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


def ingest_and_wait(client, paths: list[Path], collection: str) -> tuple[object, Timeline]:
    """`client.ingest` then poll until every document is final, noting milestones."""
    t0 = time.perf_counter()
    job = client.ingest(paths, collection=collection)
    line = Timeline(enqueued_s=time.perf_counter() - t0)
    total = len(set(job.document_ids))
    while True:
        counts = job.counts()
        now = time.perf_counter() - t0
        if line.first_ready_s is None and counts.get("ready"):
            line.first_ready_s = now
        if line.parsed_s is None and not counts.get("queued") and not counts.get("parsing"):
            line.parsed_s = now
        if counts.get("ready", 0) + counts.get("failed", 0) >= total:
            line.final_s, line.counts = now, counts
            return job, line
        time.sleep(POLL_S)


def read_chunk_texts(client, collection: str) -> tuple[list[str], int, int]:
    """(chunk texts, their stored token count, pages of ready documents) of one collection."""
    from sqlalchemy import text

    with client.sessions.begin() as session:
        rows = session.execute(
            text(
                "SELECT ch.context, ch.text, ch.token_count FROM chunks ch JOIN documents d ON d.id = ch.document_id "
                "JOIN collections c ON c.id = d.collection_id WHERE c.name = :c ORDER BY ch.id"
            ),
            {"c": collection},
        ).all()
        pages = session.execute(
            text(
                "SELECT coalesce(sum(d.page_count), 0) FROM documents d JOIN collections c ON c.id = d.collection_id "
                "WHERE c.name = :c AND d.state = 'ready'"
            ),
            {"c": collection},
        ).scalar_one()
    texts = [embedded_text(r.context, r.text) for r in rows]  # what the embed worker gave the model
    return texts, sum(r.token_count for r in rows), int(pages)


def log_tails(run: RunningStack, offsets: dict[str, int], *, settle_s: float = 60.0) -> dict[str, str]:
    """What each worker logged after the byte offsets taken before the measurement.

    Waits (up to `settle_s`) for the drain that embedded the last batch to log its summary: documents
    are ready before it ends when it still rebuilds an HNSW index dropped for the load."""
    deadline = time.monotonic() + settle_s
    while True:
        out = {}
        for name, offset in offsets.items():
            try:
                with open(run.log_path(name), "rb") as fh:
                    fh.seek(offset)
                    out[name] = fh.read().decode("utf-8", "replace")
            except OSError:
                out[name] = ""
        embed = out.get("embed", "")
        if embed.rfind("] embedded ") >= embed.rfind("] batch of ") or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def log_offsets(run: RunningStack) -> dict[str, int]:
    paths = {name: run.log_path(name) for name in ("embed", "parse")}
    return {name: path.stat().st_size if path.exists() else 0 for name, path in paths.items()}


def worker_stats(tails: dict[str, str]) -> dict[str, float]:
    """The embed worker's drain reports summed, parse task time summed, and the wake-ups that found a drain
    running or came from the sweeper."""
    names = ("forward_s", "claim_s", "write_s", "idle_s", "index_s")
    totals: dict[str, float] = {"drains": 0, "chunks": 0, "tokens": 0, "batches": 0, "drain_s": 0.0}
    totals.update(dict.fromkeys(names, 0.0))
    for m in _EMBED_LOG.finditer(tails.get("embed", "")):
        chunks, tokens, batches, wall_s, _busy, *seconds = m.groups()
        totals["drains"] += 1
        totals["chunks"] += int(chunks)
        totals["tokens"] += int(tokens)
        totals["batches"] += int(batches)
        totals["drain_s"] += float(wall_s)
        for name, value in zip(names, seconds, strict=True):
            totals[name] += float(value)
    parse_times = [float(t) for t in _PARSE_TASK_LOG.findall(tails.get("parse", ""))]
    totals["parse_tasks"] = len(parse_times)
    totals["parse_task_s"] = sum(parse_times)
    totals["embed_wakeups_skipped"] = tails.get("embed", "").count("a drain already running")
    totals["sweeps_that_woke_embed"] = len(_SWEEP_EMBED.findall(tails.get("parse", "")))
    return totals


def stage_table(line: Timeline, worker: dict[str, float], forward_s: float) -> list[tuple[str, float, str]]:
    """Where the wall time went, per stage: (stage, seconds, how it relates to the wall)."""
    drains_start = max(0.0, line.final_s - worker["drain_s"])
    return [
        ("ingest() call: read, hash, store, enqueue", line.enqueued_s, "on the wall, before any parse"),
        ("parse + chunk + store (summed over parse tasks)", worker["parse_task_s"], "parallel, overlaps the forward"),
        ("all parsed at", line.parsed_s or 0.0, "wall clock"),
        ("queue wait: before the embedder's drains", drains_start, "wall clock (first chunks to embed)"),
        ("embed worker: forward", worker["forward_s"], "the model busy"),
        ("embed worker: waiting for a claimed batch", worker["idle_s"], "on the wall"),
        ("embed worker: claim (claimer thread)", worker["claim_s"], "overlapped"),
        ("embed worker: write, COPY + mark ready (writer thread)", worker["write_s"], "overlapped"),
        ("embed worker: HNSW index rebuild", worker["index_s"], "on the wall, after the last batch"),
        ("pure forward of the same chunks, alone", forward_s, "the baseline"),
        ("ingest wall", line.final_s, ""),
    ]


def stage_section(key: str, title: str, stages: list[tuple[str, float, str]]) -> Section:
    """The stage table as a section of its own (seconds), so the report prints it as a table."""
    section = Section(key, title, "seconds per stage; the wall is the total")
    for name, seconds, note in stages:
        section.add(name, round(seconds, 2), "s", note)
    return section


def warm_up(run: RunningStack, path: Path) -> float:
    """Load the query-side model here and the models and parser children in the workers; seconds taken."""
    t0 = time.perf_counter()
    run.client.embedder(run.settings.embed.model)  # `auto` measures here once, the workers reuse its decision
    ingest_and_wait(run.client, [path], "bench-warmup")
    return time.perf_counter() - t0


def measure_ingest(
    run: RunningStack,
    paths: list[Path],
    *,
    collection: str,
    warmup_doc: Path | None,
    first_run: bool = False,
    text_layer: bool = False,
) -> list[Section]:
    """An ingest vs pure forward of the same chunk texts; after a warm one, the same files again.

    ``first_run``: the stack has just started on a fresh data dir and machine cache; no warm-up document.
    ``text_layer``: the stack runs with OCR off (what a script with PyMuPDF reads), for reference: no goal.
    """
    cold_s = warm_up(run, warmup_doc) if warmup_doc is not None else None
    key, label = ("ingest_first", "first run") if first_run else ("ingest", "warm")
    if text_layer:
        key, label = "ingest_text", "warm, text layer only: OCR off"
    e2e = Section(
        key,
        f"End-to-end ingest ({label}) vs pure model forward",
        "embedder.embed() in this process on the very chunk texts the pipeline stored = 1.0",
    )
    offsets = log_offsets(run)
    with RssSampler(run.worker_pids()) as rss:
        job, line = ingest_and_wait(run.client, paths, collection)
    texts, tokens, pages = read_chunk_texts(run.client, collection)

    embedder = run.document_embedder
    embedder.embed(texts[:32])
    t0 = time.perf_counter()
    embedder.embed(texts)
    forward_s = time.perf_counter() - t0

    e2e_ratio = ratio(line.final_s, forward_s)
    e2e.add(
        "documents",
        len(set(job.document_ids)),
        "",
        f"{line.counts.get('ready', 0)} ready, {line.counts.get('failed', 0)} failed",
    )
    e2e.add("documents ready", line.counts.get("ready", 0))
    e2e.add("documents failed", line.counts.get("failed", 0))
    e2e.add("pages (ready documents)", pages)
    e2e.add("chunks", len(texts))
    e2e.add("tokens (stored counts)", tokens)
    e2e.add("ingest wall", round(line.final_s, 2), "s", "ingest() call to every document ready or failed")
    e2e.add("pure forward", round(forward_s, 2), "s", f"backend {embedder.backend}, one pass after a warm-up")
    e2e.add("ingest ÷ pure forward", round(e2e_ratio or 0, 3), "x", f"goal <= {E2E_GOAL}")
    e2e.add("pages/s", round(pages / line.final_s, 2), "pages/s")
    e2e.add("chunks/s", round(len(texts) / line.final_s, 2), "chunks/s")
    e2e.add("tokens/s", round(tokens / line.final_s, 1), "tokens/s")
    e2e.add("ingest() call (store + enqueue)", round(line.enqueued_s, 2), "s")
    if line.first_ready_s is not None:
        e2e.add("first document ready", round(line.first_ready_s, 2), "s")
    if line.parsed_s is not None:
        e2e.add("all parsed (none queued/parsing)", round(line.parsed_s, 2), "s")
    if cold_s is not None:
        e2e.add("cold start (model loads, warm-up document)", round(cold_s, 2), "s", "not part of the ingest wall")
    worker = worker_stats(log_tails(run, offsets))
    if worker["drains"]:
        e2e.add(
            "embed worker: model busy",
            round(worker["forward_s"], 2),
            "s",
            f"{worker['drains']} drains, {worker['batches']} batches, drain wall {worker['drain_s']:.1f} s",
        )
    e2e.add("embed wake-ups skipped (drain already running)", worker["embed_wakeups_skipped"])
    e2e.add(
        "sweeps that re-woke the embedder",
        worker["sweeps_that_woke_embed"],
        "",
        f"sweep every {run.settings.worker.sweep_interval_s} s",
    )
    for name, peaks in rss.as_mib().items():
        e2e.add(
            f"peak RSS {name} worker (tree / largest process)",
            f"{peaks['tree_peak_mib']:.0f} / {peaks['largest_process_peak_mib']:.0f}",
            "MiB",
        )
    e2e.data.update(timeline=line.__dict__, rss_mib=rss.as_mib(), embed_worker=worker, backend=embedder.backend)
    stages = stage_section(f"{key}_stages", f"Where the ingest wall time went ({label})",
                           stage_table(line, worker, forward_s))  # fmt: skip
    if first_run or text_layer:
        return [e2e, stages]
    e2e.goals.append(
        Goal("ingest wall ÷ pure forward", e2e_ratio, E2E_GOAL, limited_by=_e2e_limit(line, forward_s, worker))
    )

    again = Section("reingest", "Re-ingest of the unchanged documents vs first ingest", "first ingest wall = 1.0")
    _, line2 = ingest_and_wait(run.client, paths, collection)
    re_ratio = ratio(line2.final_s, line.final_s)
    again.add("re-ingest wall", round(line2.final_s, 3), "s", "read + sha256 + insert-or-skip every file, then wait")
    again.add("re-ingest ÷ first ingest", round(re_ratio or 0, 4), "x", f"goal <= {REINGEST_GOAL}")
    again.add("documents final", sum(line2.counts.values()))
    again.data["timeline"] = line2.__dict__
    again.goals.append(
        Goal(
            "re-ingest ÷ first ingest",
            re_ratio,
            REINGEST_GOAL,
            limited_by=f"ingest() itself took {line2.enqueued_s:.2f} s of {line2.final_s:.2f} s",
        )
    )
    return [e2e, stages, again]


def _e2e_limit(line: Timeline, forward_s: float, worker: dict[str, float]) -> str:
    """One line on where the time beyond the pure forward went."""
    parts = [f"pure forward {forward_s:.1f} s of {line.final_s:.1f} s wall"]
    if worker["drains"]:
        parts.append(f"embed worker model busy {worker['forward_s']:.1f} s in {worker['drain_s']:.1f} s of drains")
    if worker["sweeps_that_woke_embed"]:
        parts.append(
            f"{worker['sweeps_that_woke_embed']} sweep(s) had to re-wake the embedder (lost wake-up: "
            f"{worker['embed_wakeups_skipped']} embed tasks skipped while a drain ran)"
        )
    if line.first_ready_s is not None:
        parts.append(f"first ready at {line.first_ready_s:.1f} s")
    if line.parsed_s is not None:
        parts.append(f"parsing done at {line.parsed_s:.1f} s")
    return "; ".join(parts)
