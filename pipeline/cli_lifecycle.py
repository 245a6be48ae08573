"""The lifecycle commands of `docpipe`: delete, sync, update-metadata, problems, reindex (registered by `cli`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from docpipe.errors import ConfigError, DocpipeError

__all__ = ["register"]

console = Console(stderr=True)
CollectionOpt = Annotated[str | None, typer.Option("--collection", "-c", help="Collection name.")]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Where the embedded stack keeps its data.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def _json_object(value: str | None, option: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{option} is not valid JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise ConfigError(f"{option} must be a JSON object")
    return parsed


def _client(data_dir: Path | None):
    from docpipe.cli import _client as make_client

    return make_client(data_dir)


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(err))}")
    raise typer.Exit(2)


def delete(
    ids: Annotated[list[int] | None, typer.Argument(help="Document ids.")] = None,
    key: Annotated[list[str] | None, typer.Option("--key", help="Exact key (repeatable).")] = None,
    path: Annotated[list[Path] | None, typer.Option("--path", help="A file's key: its resolved path.")] = None,
    prefix: Annotated[str | None, typer.Option(help="Keys starting with this (e.g. /srv/share/old/).")] = None,
    glob: Annotated[str | None, typer.Option(help="Keys matching this glob (* and ? only; * crosses /).")] = None,
    where: Annotated[str | None, typer.Option(help='Metadata filter, JSON containment: {"team": "ops"}.')] = None,
    collection: CollectionOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")] = False,
    as_json: JsonOpt = False,
    data_dir: DataDir = None,
) -> None:
    """Delete documents with their chunks and vectors; every criterion given must hold."""
    keys = [*(key or []), *(str(p.expanduser().resolve()) for p in path or [])] or None
    try:
        with _client(data_dir) as client:
            docs = client.delete(
                ids or None, key=keys, prefix=prefix, glob=glob, where=_json_object(where, "--where"),
                collection=collection, dry_run=dry_run,
            )  # fmt: skip
    except (DocpipeError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps([{"id": d.id, "source": d.source, "state": d.state} for d in docs], indent=2))
    else:
        table = Table("id", "source", "state", title="would be deleted" if dry_run else "deleted")
        for d in docs:
            table.add_row(str(d.id), escape(d.source), d.state)
        Console().print(table)
    console.print(f"{len(docs)} documents {'would be ' if dry_run else ''}deleted")


def sync(
    root: Annotated[Path, typer.Argument(help="The folder whose files the collection must match.")],
    collection: CollectionOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until new versions are ready or failed.")] = False,
    metadata: Annotated[str | None, typer.Option(help="JSON object stored with new documents.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List the keys of each action.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Add new files, replace changed ones, delete removed ones; print a summary (JSON on stdout)."""
    try:
        with _client(data_dir) as client:
            report = client.sync(
                root, collection=collection, dry_run=dry_run, metadata=_json_object(metadata, "--metadata"), wait=wait
            )
    except (DocpipeError, ValueError) as err:
        _fail(err)
    if verbose:
        plan = report.plan
        for action, keys in (("add", plan.add), ("replace", plan.replace), ("delete", plan.delete)):
            for k in keys:
                console.print(f"{action:8} {escape(k)}")
        for old, new in plan.rename:
            console.print(f"rename   {escape(old)} -> {escape(new)}")
    summary = report.summary()
    console.print(
        f"{'dry run: ' if dry_run else ''}"
        + ", ".join(f"{v} {k}" for k, v in summary.items())
        + f" ({report.skipped} unsupported skipped) in {report.seconds:.2f} s"
    )
    print(json.dumps(summary, sort_keys=True))


def update_metadata(
    ids: Annotated[list[int] | None, typer.Argument(help="Document ids.")] = None,
    where: Annotated[str | None, typer.Option(help="Metadata filter (JSON containment) instead of ids.")] = None,
    set_: Annotated[str, typer.Option("--set", help='JSON object merged in; null removes a key: {"year": 2026}.')] = "",
    replace: Annotated[bool, typer.Option("--replace", help="The metadata becomes --set, not merged.")] = False,
    collection: CollectionOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Change documents' metadata without parsing or embedding them again."""
    try:
        patch = _json_object(set_ or None, "--set")
        if patch is None:
            raise ConfigError("--set is required")
        filt = _json_object(where, "--where")
        if (filt is None) == (not ids):
            raise ConfigError("give document ids or --where (one of them)")
        with _client(data_dir) as client:
            n = client.update_metadata(filt if filt is not None else ids, patch, collection=collection, replace=replace)
    except (DocpipeError, ValueError) as err:
        _fail(err)
    console.print(f"{n} documents updated")


def problems(collection: CollectionOpt = None, as_json: JsonOpt = False, data_dir: DataDir = None) -> None:
    """Documents that are not searchable: failed, or no text found (scans without a text layer, empty files)."""
    try:
        with _client(data_dir) as client:
            found = client.problems(collection)
    except DocpipeError as err:
        _fail(err)
    if as_json:
        rows = [
            {"id": p.id, "collection": p.collection, "source": p.source, "problem": p.problem, "reason": p.reason}
            for p in found
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "source", "problem", "reason")
    for p in found:
        table.add_row(str(p.id), escape(p.source), p.problem, escape(p.reason or ""))
    Console().print(table)


def _progress_line(now: Any) -> str:
    """One line of reindex progress: documents re-parsed (during a rechunk) and chunks embedded."""
    line = f"{now.embedded}/{now.chunks} chunks embedded with {escape(now.target or now.model)}"
    if now.rechunk is not None:
        line = f"{now.rechunk.done}/{now.rechunk.documents} documents re-chunked, " + line
        if now.rechunk.failed:
            line += f", {len(now.rechunk.failed)} failed"
    return line


def reindex(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Hugging Face id or local model directory.")
    ] = None,
    collection: CollectionOpt = None,
    rechunk: Annotated[
        bool, typer.Option("--rechunk", help="Parse every document again from its stored bytes with new settings.")
    ] = False,
    max_tokens: Annotated[
        int | None, typer.Option("--chunk-max-tokens", help="With --rechunk: tokens per chunk.")
    ] = None,
    overlap: Annotated[
        int | None, typer.Option("--chunk-overlap", help="With --rechunk: tokens repeated from the previous chunk.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow progress until the collection switches.")] = False,
    drop_old: Annotated[bool, typer.Option("--drop-old", help="With --wait: then delete the old vectors.")] = False,
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Seconds --wait gives up after.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Embed a collection with another model (-m), or chunk it again (--rechunk); searches switch once all is done.

    Until the switch, searches answer from the current chunks and model. With --rechunk,
    settings not given keep the collection's current values; a document whose re-parse
    fails holds the switch (see `docpipe problems`); running the same command again retries it.
    """
    try:
        settings = {k: v for k, v in {"max_tokens": max_tokens, "overlap_tokens": overlap}.items() if v is not None}
        if settings and not rechunk:
            raise ConfigError("--chunk-max-tokens and --chunk-overlap go with --rechunk")
        if model is None and not rechunk:
            raise ConfigError("give --model, --rechunk, or both")
        with _client(data_dir) as client:
            before = client.reindex_status(collection).model
            now = client.reindex(collection, model=model, rechunk=settings if rechunk else None)
            if now.rechunk is not None:
                console.print(f"rechunking with {json.dumps(now.rechunk.chunking)}: {_progress_line(now)}")
            elif now.target is not None:
                console.print(f"reindexing from {escape(before)} to {escape(now.target)}: {_progress_line(now)}")
            if not wait:
                return
            started = time.monotonic()
            while now.target is not None:
                if (
                    now.rechunk is not None
                    and now.rechunk.failed
                    and now.rechunk.done + len(now.rechunk.failed) >= (now.rechunk.documents)
                ):
                    for key, reason in now.rechunk.failed:
                        console.print(f"[red]re-parse failed[/red] {escape(key)}: {escape(reason)}")
                    raise ConfigError("not switched: the documents above failed to re-parse (the old chunks stay)")
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise ConfigError(f"not switched after {timeout_s:.0f} s: {_progress_line(now)}")
                time.sleep(1.0)
                now = client.reindex_status(collection)
                console.print(_progress_line(now))
            console.print(f"switched ({escape(now.model)}) after {time.monotonic() - started:.1f} s")
            if drop_old and now.model != before:
                console.print(
                    f"{client.drop_vectors(before, collection=collection)} vectors of {escape(before)} dropped"
                )
    except (DocpipeError, ValueError) as err:
        _fail(err)


def register(app: typer.Typer) -> None:
    """Add the lifecycle commands to the `docpipe` app."""
    app.command()(delete)
    app.command()(sync)
    app.command(name="update-metadata")(update_metadata)
    app.command()(problems)
    app.command()(reindex)
