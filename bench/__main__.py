"""`python -m docpipe.bench`: every measurement in one run, each as a ratio to a baseline of the same run."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from rich.console import Console

from docpipe.bench.common import Section, machine_info, ratio
from docpipe.bench.corpus import REPO, default_docs, manifest_class, parse_corpus, sample_texts, select_documents
from docpipe.bench.quality import default_beir_dir

DEFAULTS = {  # full run / --quick
    "embed_chunks": (512, 64),
    "ingest_tokens": (0, 40_000),
    "query_chunks": (100_000, 10_000),
    "queries": (50, 20),
    "hnsw_n": (5_000, 2_000),
    "repeats": (2, 2),
    "small_docs": (5_000, 500),
    "quality_docs": (1_500, 400),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m docpipe.bench", description=__doc__)
    p.add_argument("--docs", type=Path, default=None, help="documents to ingest (default: the shared PDF corpus)")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: bench/results/<timestamp>.json)")
    p.add_argument("--quick", action="store_true", help="a small subset (~3 minutes on 2 cores)")
    p.add_argument("--skip-langchain", action="store_true", help="skip the LangChain baseline")
    sized = {
        "embed_chunks": "real chunks for the backend comparison",
        "ingest_tokens": "token budget of the documents ingested end to end (0: all)",
        "query_chunks": "synthetic chunks for the query latency",
        "queries": "timed queries per search mode",
        "hnsw_n": "vectors for the HNSW load comparison",
        "repeats": "timed repeats per embedding backend, the best counts",
        "small_docs": "short .txt documents (SciFact abstracts) for the small-documents case (0: skip)",
        "quality_docs": "SciFact documents for the nDCG@10 quality guard (judged ones first; 0: skip)",
    }
    for name, what in sized.items():
        full, quick = DEFAULTS[name]
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"{what} (default {full}; --quick {quick})")
    p.add_argument("--keep", action="store_true", help="keep the temporary stack (data, worker logs) and print where")
    p.add_argument(
        "--model-cache",
        type=Path,
        help="machine cache to use (default: a fresh one, so the first run pays for export and measurement)",
    )
    p.add_argument("--all-files", action="store_true", help="ingest every file under --docs, not only ok_text ones")
    args = p.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.docs = args.docs or default_docs()
    results = REPO / "bench" / "results" if (REPO / "pyproject.toml").exists() else Path.cwd() / "bench-results"
    args.out = args.out or results / f"{datetime.now():%Y%m%d-%H%M%S}.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    console = Console() if sys.stdout.isatty() else Console(width=140)  # piped: wide enough for the tables
    started = time.perf_counter()
    machine = machine_info()
    steps = Steps(console, started)

    from docpipe.bench.embedding import measure_embedding
    from docpipe.bench.harness import bench_settings

    with tempfile.TemporaryDirectory(prefix="docpipe-bench-") as tmp:
        work = Path(tempfile.mkdtemp(prefix="docpipe-bench-")) if args.keep else Path(tmp)
        machine_cache = args.model_cache or work / "machine-cache"  # fresh: a first run on this machine
        settings = bench_settings(work / "stack", model_cache=machine_cache)
        wanted = None if args.all_files else manifest_class(args.docs)
        with console.status("parsing and chunking the documents"):
            files = parse_corpus(args.docs, settings, only=wanted)
        kept = [f for f in files if wanted is None or f.path.name in wanted]
        texts = sample_texts(kept, args.embed_chunks)
        chosen = select_documents(kept, args.ingest_tokens or None)
        console.print(
            f"{len(files)} files under {args.docs}; {len(chosen)} selected for ingest "
            f"({'ok_text only, ' if wanted is not None else ''}{sum(f.tokens for f in chosen)} tokens); "
            f"{len(texts)} chunks for the backend comparison; machine cache {machine_cache}"
        )
        run_stack_measurements(args, steps, work, chosen, texts, machine_cache)
        run_text_layer(steps, work, [f.path for f in chosen], machine_cache)
        steps.run(
            "embedding",
            "Embedding backends vs sentence-transformers",
            lambda: measure_embedding(texts, settings=settings, repeats=args.repeats),
        )
        note_auto_choice(steps.sections)
        run_quality(args, steps, settings)
        if args.small_docs and (beir := default_beir_dir()) is not None:
            from docpipe.bench.small_docs import measure_small_docs

            steps.run(
                "small_docs",
                f"{args.small_docs} small documents",
                lambda: measure_small_docs(work, beir, n=args.small_docs, model_cache=machine_cache),
            )
        if args.keep:
            console.print(f"kept the stack's data and worker logs in {work}")
    sections = steps.sections

    machine["load_avg_1m_at_end"] = os.getloadavg()[0]
    machine["bench_wall_s"] = round(time.perf_counter() - started, 1)
    from docpipe.bench.report import print_report, write_json

    print_report(console, sections, machine)
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.out, sections=sections, machine=machine, options=options)
    console.print(f"wrote {args.out} ({machine['bench_wall_s']:.0f} s)")
    return 0


def note_auto_choice(sections: list[Section]) -> None:
    """Say whether `auto` chose the backend that was fastest (at equal quality) on the real chunks."""
    by_key = {s.key: s for s in sections}
    if "embedding" not in by_key or "ingest" not in by_key:
        return
    fastest = by_key["embedding"].data.get("fastest_ok")
    chosen = by_key["ingest"].data.get("backend")
    query = by_key["query"].data.get("backend") if "query" in by_key else None
    if fastest and chosen:
        verdict = "the same" if fastest == chosen else f"not {fastest}, the fastest on these real chunks"
        queries = f"; for queries (one short text per call) {query}" if query else ""
        by_key["embedding"].notes.append(f"`auto` chose {chosen} for ingest: {verdict}{queries}")


class Steps:
    """Runs the measurements one by one with a spinner; a failing one becomes a skipped section, not a crash."""

    def __init__(self, console: Console, started: float) -> None:
        self.console = console
        self.started = started
        self.sections: list[Section] = []

    def run(self, key: str, title: str, measure: Callable[[], Section | list[Section]]) -> list[Section]:
        try:
            with self.console.status(title):
                result = measure()
        except Exception as exc:
            self.console.print_exception(max_frames=8)
            result = Section(key, title, "", skipped=f"failed: {type(exc).__name__}: {exc}")
        found = result if isinstance(result, list) else [result]
        self.sections.extend(found)
        self.console.print(f"[dim]{title}: done at {time.perf_counter() - self.started:.0f} s[/]")
        return found

    def get(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.key == key), None)


def warmup_document(work: Path) -> Path:
    """A small Markdown file that makes the workers load their models before anything is timed."""
    path = work / "warmup.md"
    path.write_text("# Warm-up\n\nThis document loads the parser and the embedding model in the workers.\n" * 8)
    return path


def run_stack_measurements(args, steps: Steps, work: Path, chosen, texts, model_cache: Path) -> None:
    """First-run and warm ingest, LangChain, query latency and HNSW load against one embedded stack."""
    from docpipe.bench.harness import running_stack
    from docpipe.bench.hnsw_load import measure_hnsw_load
    from docpipe.bench.ingest import measure_ingest
    from docpipe.bench.query import measure_query

    paths = [f.path for f in chosen]
    with ExitStack() as cleanup:
        try:
            t0 = time.perf_counter()
            with steps.console.status("starting the embedded stack (fresh data dir and machine cache)"):
                run = cleanup.enter_context(running_stack(work, model_cache=model_cache))
            start = Section("stack_start", "docpipe up on a fresh data dir and machine cache", "seconds")
            start.add("stack start, workers ready", round(time.perf_counter() - t0, 2), "s", "before any ingest")
            start.add("of which: backend choice (export, quantise, measure)", round(run.stack.prepare_s, 2), "s",
                      "once per machine, model and library versions")  # fmt: skip
            steps.sections.append(start)
        except Exception as exc:  # keep the figures measured so far
            steps.console.print_exception(max_frames=8)
            reason = f"the embedded stack did not start: {type(exc).__name__}: {exc}"
            for key in ("ingest_first", "ingest", "reingest", "langchain", "query", "hnsw_load"):
                steps.sections.append(Section(key, key, "", skipped=reason))
            return
        steps.run(
            "ingest_first",
            "End-to-end ingest, first run",
            lambda: measure_ingest(run, paths, collection="bench-first", warmup_doc=None, first_run=True),
        )
        steps.run(
            "ingest",
            "End-to-end ingest, warm",
            lambda: measure_ingest(run, paths, collection="bench-docpipe", warmup_doc=warmup_document(work)),
        )
        run_langchain(args, steps, run, paths)
        steps.run(
            "query", "Query latency", lambda: measure_query(run, texts, n=args.query_chunks, queries=args.queries)
        )
        dim = run.client.embedder(run.settings.embed.model).dim
        steps.run(
            "hnsw_load",
            "HNSW during load vs after",
            lambda: measure_hnsw_load(run.stack.database_url, n=args.hnsw_n, dim=dim),
        )
        steps.console.print("[dim]stopping the embedded stack[/]")


def run_text_layer(steps: Steps, work: Path, paths: list[Path], model_cache: Path) -> None:
    """The warm ingest again in a stack with OCR off: the text that LangChain's PyMuPDFLoader reads,
    so the comparison with its wall is like for like (the default run also OCRs pages without text)."""
    from docpipe.bench.harness import running_stack
    from docpipe.bench.ingest import measure_ingest

    def measure() -> list[Section]:
        with running_stack(work / "text-layer", model_cache=model_cache, ocr_mode="off") as run:
            found = measure_ingest(
                run, paths, collection="bench-text", warmup_doc=warmup_document(work), text_layer=True
            )
        langchain = steps.get("langchain")
        if langchain is not None and not langchain.skipped and "wall_s" in langchain.data:
            wall = found[0].data["timeline"]["final_s"]
            speedup = ratio(float(langchain.data["wall_s"]), wall)
            found[0].add("LangChain wall ÷ this wall", round(speedup or 0, 3), "x", "the same text on both sides")
        return found

    steps.run("ingest_text", "End-to-end ingest, warm, text layer only (OCR off)", measure)


def run_langchain(args, steps: Steps, run, paths: list[Path]) -> None:
    """The LangChain pipeline on the same files, against both docpipe walls."""
    from docpipe.bench.langchain_baseline import measure_langchain

    title = "docpipe ingest vs a LangChain pipeline"
    walls = {
        label: s.data["timeline"]["final_s"]
        for label, key in (("first run", "ingest_first"), ("warm", "ingest"))
        if (s := steps.get(key)) is not None and not s.skipped and "timeline" in s.data
    }
    if args.skip_langchain:
        steps.sections.append(Section("langchain", title, "", skipped="--skip-langchain"))
    elif not walls:
        steps.sections.append(Section("langchain", title, "", skipped="no docpipe ingest time to compare with"))
    else:
        embedder = run.client.embedder(run.settings.embed.model)
        steps.run(
            "langchain",
            title,
            lambda: measure_langchain(
                paths, database_url=run.stack.database_url, docpipe_walls=walls, tokenizer=embedder.tokenizer
            ),
        )


def run_quality(args, steps: Steps, settings) -> None:
    """nDCG@10 of each CPU backend against torch-fp32 on SciFact, `--quality-docs` documents of it."""
    from docpipe.bench.quality import load_beir, measure_quality_of_backends

    beir_dir = default_beir_dir()
    if not args.quality_docs or beir_dir is None:
        return
    beir = load_beir(beir_dir, max_docs=args.quality_docs)
    steps.run("quality", "Search quality of the backends", lambda: measure_quality_of_backends(beir, settings))


if __name__ == "__main__":
    sys.exit(main())
