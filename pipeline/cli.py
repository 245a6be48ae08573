"""The `docpipe` command line."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from docpipe.cli_lifecycle import register as register_lifecycle
from docpipe.config import Settings
from docpipe.errors import ConfigError, DocpipeError

if TYPE_CHECKING:
    from docpipe.client import Client

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Documents in, pgvector search out.")
console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Where the embedded stack keeps its data.")]
CollectionOpt = Annotated[str | None, typer.Option("--collection", "-c", help="Collection name.")]


def _settings(data_dir: Path | None = None) -> Settings:
    settings = Settings()
    return settings.model_copy(update={"data_dir": data_dir}) if data_dir else settings


def _client(data_dir: Path | None = None):
    from docpipe.client import Client

    return Client(settings=_settings(data_dir))


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff]")


def safe(text: object) -> str:
    """``text`` fit for the terminal: control characters (escape sequences that could retitle or
    clear it) and bidi overrides shown as U+FFFD, Rich markup escaped (``[/nope]`` prints as is)."""
    return escape(_UNPRINTABLE.sub("\ufffd", str(text)))


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {safe(err)}")
    raise typer.Exit(2)


@app.command()
def up(
    data_dir: DataDir = None,
    workers: Annotated[bool, typer.Option(help="Start the Celery workers too.")] = True,
) -> None:
    """Start Postgres+pgvector, Redis and the workers; Ctrl-C stops everything."""
    from docpipe.stack import Stack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stack = Stack(_settings(data_dir), with_workers=workers)
    try:
        stack.start()
    except DocpipeError as err:
        _fail(err)
    print(f"DATABASE_URL={stack.database_url}", flush=True)  # flushed: a pipe reader sees them now
    print(f"REDIS_URL={stack.redis_url}", flush=True)
    console.print(f"docpipe stack up; data in {stack.settings.data_dir}, logs in {stack.log_dir}. Ctrl-C stops it.")
    stack.run_forever()


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files, directories or globs.")],
    collection: CollectionOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every document is ready or failed.")] = False,
    metadata: Annotated[str | None, typer.Option(help="JSON object stored with each document.")] = None,
    follow_symlinks: Annotated[
        bool, typer.Option("--follow-symlinks", help="Follow symlinks that lead out of a walked folder.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Store documents and enqueue them for parsing and embedding."""
    try:
        meta = json.loads(metadata) if metadata else None
        if meta is not None and not isinstance(meta, dict):
            raise ConfigError("--metadata must be a JSON object")
        with _client(data_dir) as client:
            job = client.ingest(paths, collection=collection, metadata=meta, follow_symlinks=follow_symlinks)
            console.print(
                f"{len(job.document_ids)} documents ({job.created} new, {job.skipped} unsupported skipped) "
                f"stored and enqueued in {job.enqueue_s:.2f} s"
            )
            if wait:
                counts = job.wait(progress=True)
                print(json.dumps(counts, sort_keys=True))
    except (DocpipeError, ValueError) as err:
        _fail(err)


@app.command()
def search(
    query: str,
    collection: CollectionOpt = None,
    k: Annotated[int, typer.Option("-k", help="Number of hits.")] = 10,
    rerank: Annotated[bool, typer.Option("--rerank", help="Rerank candidates with the cross-encoder.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON.")] = False,
    mode: Annotated[str, typer.Option(help="hybrid | vector | text")] = "hybrid",
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="'document': one hit per document, its best chunk.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Search a collection."""
    from docpipe.search import hits_to_json

    if mode not in ("hybrid", "vector", "text"):
        _fail(ValueError(f"unknown mode {mode!r}"))
    try:
        with _client(data_dir) as client:
            hits = client.search(
                query,
                collection=collection,
                k=k,
                rerank=rerank,
                mode=mode,
                group_by=group_by,  # type: ignore[arg-type]
            )
    except (DocpipeError, ValueError, TimeoutError) as err:
        _fail(err)
    if as_json:
        print(hits_to_json(hits))
        return
    print_hits(hits)


def print_hits(hits) -> None:
    out = Console()
    if not hits:
        out.print("no hits")
    for rank, hit in enumerate(hits, start=1):
        pages = f"p. {hit.page_start}" + (f"-{hit.page_end}" if hit.page_end != hit.page_start else "")
        snippet = " ".join(hit.text.split())[:240]
        out.print(f"[bold]{rank:>2}.[/bold] {hit.score:.4f}  {safe(Path(hit.source).name)}  {pages}")
        out.print(f"    {safe(snippet)}", highlight=False)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False, data_dir: DataDir = None) -> None:
    """Documents per state, chunks and embeddings, per collection."""
    try:
        with _client(data_dir) as client:
            info = client.status()
    except DocpipeError as err:
        _fail(err)
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    table = Table("collection", "model", "documents", "problems", "chunks", "embeddings")
    for name, row in info.items():
        states = " ".join(f"{k}={v}" for k, v in sorted(row["documents"].items()))
        problems = f"{row['problems']} ({row['no_text']} without text)" if row["problems"] else "0"
        embeddings = str(row["embeddings"]) + (" (index rebuilding: exact scans)" if row["index_deferred"] else "")
        table.add_row(safe(name), safe(row["model"]), states, problems, str(row["chunks"]), embeddings)
    Console().print(table)


@app.command()
def failed(
    collection: CollectionOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False, data_dir: DataDir = None
) -> None:
    """List failed documents with their reasons."""
    with _client(data_dir) as client:
        docs = client.failed(collection)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": d.id,
                        "collection": d.collection,
                        "source": d.source,
                        "reason": d.reason,
                        "attempts": d.attempts,
                    }
                    for d in docs
                ],
                indent=2,
            )
        )
        return
    table = Table("id", "source", "attempts", "reason")
    for d in docs:
        table.add_row(str(d.id), safe(Path(d.source).name), str(d.attempts), safe(d.reason or ""))
    Console().print(table)


@app.command()
def retry(collection: CollectionOpt = None, data_dir: DataDir = None) -> None:
    """Queue every failed document again."""
    with _client(data_dir) as client:
        console.print(f"{client.retry_failed(collection)} documents queued again")


@app.command()
def purge(collection: CollectionOpt = None, data_dir: DataDir = None) -> None:
    """Delete failed documents."""
    with _client(data_dir) as client:
        console.print(f"{client.purge_failed(collection)} failed documents deleted")


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Apply the database migrations to DATABASE_URL (or the running stack)."""
    from docpipe.db import migrate as run_migrations
    from docpipe.db import resolve_database_url

    try:
        run_migrations(resolve_database_url(_settings(data_dir)))
    except DocpipeError as err:
        _fail(err)
    console.print("database is at the latest migration")


@app.command()
def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma-separated: parse, embed, rerank.")] = "parse",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="0: one per core (parse).")] = 0,
    pool: Annotated[str | None, typer.Option(help="Celery pool; default prefork for parse, threads otherwise.")] = None,
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus metrics on this port (0: off).")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker in the foreground (what `docpipe up` and docker compose start)."""
    from docpipe.db import resolve_database_url, resolve_redis_url
    from docpipe.stack import worker_args

    settings = _settings(data_dir)
    try:
        env = {
            "DATABASE_URL": resolve_database_url(settings),
            "REDIS_URL": resolve_redis_url(settings),
            "DOCPIPE_DATA_DIR": str(settings.data_dir),
        }
    except DocpipeError as err:
        _fail(err)
    cpu_only = set(queues.split(",")) <= {"parse"}
    pool = pool or ("prefork" if cpu_only else "threads")
    n = concurrency or (len(os.sched_getaffinity(0)) if cpu_only else 2)
    name = queues.replace(",", "-")
    if metrics_port:
        from docpipe.stack import fresh_metrics_env

        env.update(fresh_metrics_env(settings.data_dir / "metrics" / name))
        env["DOCPIPE_WORKER__METRICS_PORT"] = str(metrics_port)
    os.environ.update(env)
    args = worker_args(queues, name=name, pool=pool, concurrency=n)
    os.execv(args[0], args)


@app.command()
def quickstart(
    paths: Annotated[
        list[str] | None, typer.Argument(help="Documents to ingest (default: this project's docs).")
    ] = None,
    query: Annotated[str, typer.Option("--query", "-q")] = "how do I search documents with SQL",
    collection: Annotated[str, typer.Option("--collection", "-c")] = "quickstart",
    k: Annotated[int, typer.Option("-k")] = 5,
    data_dir: DataDir = None,
) -> None:
    """Start the embedded stack, ingest documents, search them, print the hits, stop."""
    from docpipe.client import Client
    from docpipe.stack import Stack

    settings = _settings(data_dir)
    paths = paths or [str(p) for p in _bundled_docs()]
    started = time.perf_counter()
    stack = Stack(settings)
    try:
        stack.start()
        with Client(stack.database_url, stack.redis_url, settings=settings) as client:
            job = client.ingest(paths, collection=collection)
            counts = job.wait(progress=True, timeout_s=3600)
            info = client.status(collection)[collection]
            console.print(
                f"documents: {json.dumps(counts, sort_keys=True)}; chunks: {info['chunks']}; "
                f"embeddings: {info['embeddings']}; {time.perf_counter() - started:.1f} s"
            )
            for doc in client.failed(collection)[:10]:
                console.print(f"  failed: {safe(Path(doc.source).name)}: {safe(doc.reason)}")
            console.print(f"[bold]search:[/bold] {safe(query)}")
            print_hits(client.search(query, collection=collection, k=k))
    except DocpipeError as err:
        _fail(err)
    finally:
        stack.stop()


@contextmanager
def _client_or_embedded(settings: Settings) -> Iterator[Client]:
    """A client of the configured or running stack; else an embedded stack started for this command."""
    from docpipe.client import Client
    from docpipe.db import resolve_database_url
    from docpipe.stack import Stack

    try:
        resolve_database_url(settings)
    except ConfigError:
        console.print("no running stack: starting the embedded one for this command")
        with Stack(settings) as stack, Client(stack.database_url, stack.redis_url, settings=settings) as client:
            yield client
        return
    with Client(settings=settings) as client:
        yield client


@app.command(name="eval")
def evaluate(
    beir_dir: Annotated[Path, typer.Argument(help="BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/.")],
    collection: CollectionOpt = None,
    modes: Annotated[str, typer.Option(help="Comma-separated search modes.")] = "hybrid,vector,text",
    rerank: Annotated[bool, typer.Option("--rerank", help="Also measure hybrid search reranked.")] = False,
    split: Annotated[str | None, typer.Option(help="qrels split (default: test, else the only one).")] = None,
    max_queries: Annotated[int, typer.Option(help="Use the first N judged queries (0: all).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Ingest a BEIR-layout dataset through the pipeline (or reuse it) and print nDCG@10, Recall@100, latency."""
    from docpipe.evaluation import MARKDOWN, BeirSet, as_markdown, default_collection, evaluate

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    if bad := [m for m in wanted if m not in ("hybrid", "vector", "text")]:
        _fail(ValueError(f"unknown mode(s): {', '.join(bad)}"))
    try:
        dataset = BeirSet.open(beir_dir, split)
        qrels = dataset.qrels()
        queries = dataset.queries(qrels)
        if max_queries:
            queries = dict(list(queries.items())[:max_queries])
        name = collection or default_collection(beir_dir)
        with _client_or_embedded(_settings(data_dir)) as client:
            docs = ((doc_id, as_markdown(title, body), MARKDOWN) for doc_id, title, body in dataset.corpus())
            job = client.ingest_bytes(docs, collection=name)
            console.print(f"{name}: {len(job.document_ids)} documents ({job.created} new); {len(queries)} queries")
            job.wait(progress=not as_json)
            runs = [(m, m, False) for m in wanted] + ([("hybrid+rerank", "hybrid", True)] if rerank else [])
            results = []
            for label, mode, reranked in runs:

                def run(query: str, mode: str = mode, reranked: bool = reranked) -> list[str]:
                    hits = client.search(query, collection=name, k=100, mode=mode, group_by="document", rerank=reranked)
                    return [hit.source for hit in hits]

                results.append(evaluate(label, run, queries, qrels))
    except (DocpipeError, ValueError, TimeoutError) as err:
        _fail(err)
    if as_json:
        print(json.dumps({"dataset": str(beir_dir), "split": dataset.split, "collection": name,
                          "results": [r.summary() for r in results]}, indent=2))  # fmt: skip
        return
    table = Table(title=f"{beir_dir.name} ({dataset.split}, {len(queries)} queries)")
    for column in ("mode", "nDCG@10", "Recall@100", "p50 ms", "p95 ms"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for r in results:
        table.add_row(r.mode, f"{r.ndcg_at_10:.4f}", f"{r.recall_at_100:.4f}", f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}")
    Console().print(table)


@app.command()
def doctor(
    measure: Annotated[bool, typer.Option("--measure", help="Measure the CPU backends now (again).")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """This machine as the embedder sees it: CPU flags, chosen backend, measured rates, cache location."""
    from docpipe.embed.prepare import backend_report, choose

    settings = _settings()
    report = choose(settings, remeasure=True) if measure else backend_report(settings)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    flags = " ".join(f for f, present in report["cpu_flags"].items() if present) or "none of interest"
    print(f"cpu: {report['cores']} cores; flags: {flags}")
    print(f"model: {report['model']}; backend setting: {report['configured_backend']}")
    print(f"cache: {report['cache_dir']}")
    if report.get("error"):
        print(f"model not resolvable: {report['error']}")
        return
    chosen = report.get("chosen_backend") or "none yet (`docpipe up` or `docpipe doctor --measure` chooses)"
    print(f"chosen backend: {chosen}; for queries: {report.get('query_backend') or chosen}")
    print(f"decision: {report['decision_file']}")
    sample = report.get("sample") or {}
    for name, r in (report.get("measured") or {}).items():
        if "error" in r:
            print(f"  {name:12s} unavailable: {r['error']}")
            continue
        verdict = "ok" if r["passed"] else "fails the quality check"
        print(
            f"  {name:12s} {r['texts_per_s']:7.1f} texts/s (~{sample.get('mean_tokens', '?')} tokens each), "
            f"{r.get('query_ms', float('nan')):5.1f} ms per query, "
            f"cosine to fp32 mean {r['mean_cosine']:.4f} min {r['min_cosine']:.4f}: {verdict}"
        )


def _bundled_docs() -> list[Path]:
    """The project's own documentation (README), which the wheel or checkout carries."""
    here = Path(__file__).resolve().parent
    found = [p for p in (here.parent / "README.md", here / "README.md") if p.exists()]
    if not found:
        raise typer.BadParameter("no documents given and none bundled; pass paths")
    return found


register_lifecycle(app)  # delete, sync, update-metadata, problems


def main() -> None:  # pragma: no cover - entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
