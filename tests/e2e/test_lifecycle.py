"""The index follows the folder, on the real stack: ingest, edit, delete, add, rename, sync; delete mid-pipeline."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from docpipe.client import Job

COLLECTION = "e2e-lifecycle"
PDF = "pdf/samplefiles__004-pdflatex-4-pages__pdflatex-4-pages.pdf"

FILES = {
    "a.txt": "The apple orchard report.\n\nApple trees were pruned in March and the harvest doubled.",
    "b.txt": "Bridge inspection notes.\n\nThe bridge cables showed rust on the north span.",
    "sub/c.md": "# Canal maintenance\n\nThe canal locks were repainted and the gates oiled.",
}
EDITED_A = "The avocado grove report.\n\nAvocado saplings replaced the old trees along the river."
ADDED_E = "Elevator service log.\n\nThe elevator controller firmware was updated on Tuesday."


def indexed(client) -> dict[str, set[str]]:
    """Key → chunk texts that SQL users see (the `docpipe_chunks` view: ready versions, current model)."""
    with client.sessions.begin() as s:
        rows = s.execute(text("SELECT source, text FROM docpipe_chunks WHERE collection = :c"), {"c": COLLECTION}).all()
    out: dict[str, set[str]] = {}
    for source, body in rows:
        out.setdefault(source, set()).add(body)
    return out


def keyword_sources(client, query: str) -> list[str]:
    hits = client.search(query, collection=COLLECTION, mode="text", k=20)
    return sorted({Path(h.source).name for h in hits})


def write(root: Path, rel: str, body: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(body)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, corpus_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("share").resolve()
    for rel, body in FILES.items():
        write(root, rel, body)
    shutil.copy(corpus_dir / PDF, root / "report.pdf")
    return root


def test_sync_scenario_search_sees_exactly_the_current_files(client, folder: Path) -> None:
    t0 = time.perf_counter()
    first = client.sync(folder, collection=COLLECTION, wait=True, timeout_s=300)
    first_s = time.perf_counter() - t0
    assert first.summary() == {"added": 4, "replaced": 0, "renamed": 0, "deleted": 0, "unchanged": 0, "failed": 0}
    now = indexed(client)
    assert set(now) == {str(folder / r) for r in ("a.txt", "b.txt", "sub/c.md", "report.pdf")}
    assert keyword_sources(client, "apple orchard") == ["a.txt"]

    t0 = time.perf_counter()
    again = client.sync(folder, collection=COLLECTION)
    unchanged_s = time.perf_counter() - t0
    assert again.summary()["unchanged"] == 4 and again.document_ids == []
    print(f"\nsync of an unchanged folder {unchanged_s:.3f} s vs its first ingest {first_s:.3f} s "
          f"({unchanged_s / first_s:.4f}x)")  # fmt: skip

    old_a = indexed(client)[str(folder / "a.txt")]
    write(folder, "a.txt", EDITED_A)
    (folder / "b.txt").unlink()
    write(folder, "e.txt", ADDED_E)
    os.rename(folder / "sub/c.md", folder / "sub/c2.md")
    plan = client.sync(folder, collection=COLLECTION, dry_run=True)
    assert plan.summary() == {"added": 1, "replaced": 1, "renamed": 1, "deleted": 1, "unchanged": 1, "failed": 0}
    assert indexed(client)[str(folder / "b.txt")]  # a dry run changes nothing

    report = client.sync(folder, collection=COLLECTION)
    assert report.plan.rename == [(str(folder / "sub/c.md"), str(folder / "sub/c2.md"))]
    # While the edit is parsed and embedded, a.txt answers with one whole version: old, then new.
    seen: list[str] = []
    deadline = time.monotonic() + 300
    while True:
        a = indexed(client).get(str(folder / "a.txt"))
        assert a, "a.txt vanished from the index mid-replace"
        state = "old" if a == old_a else "new" if all("vocado" in t or "river" in t for t in a) else f"mixed {a}"
        assert not state.startswith("mixed"), state
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == "new":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert seen in (["old", "new"], ["new"])
    assert Job(client, COLLECTION, report.document_ids).wait(timeout_s=300) == {"ready": 2}
    assert client.sync(folder, collection=COLLECTION).summary()["unchanged"] == 4

    now = indexed(client)
    assert set(now) == {str(folder / r) for r in ("a.txt", "e.txt", "sub/c2.md", "report.pdf")}
    assert keyword_sources(client, "apple orchard") == []
    assert keyword_sources(client, "avocado grove") == ["a.txt"]
    assert keyword_sources(client, "bridge cables rust") == []
    assert keyword_sources(client, "canal locks") == ["c2.md"]
    assert keyword_sources(client, "elevator firmware") == ["e.txt"]
    with client.sessions.begin() as s:  # one version per key: no duplicate, no stale row anywhere
        versions = s.execute(
            text(
                "SELECT d.source, count(*) FROM documents d JOIN collections c ON c.id = d.collection_id "
                "WHERE c.name = :c GROUP BY d.source"
            ),
            {"c": COLLECTION},
        ).all()
    assert sorted(n for _, n in versions) == [1, 1, 1, 1]
    hybrid = client.search("avocado saplings by the river", collection=COLLECTION, k=3)
    assert hybrid and Path(hybrid[0].source).name == "a.txt"


def test_delete_racing_the_pipeline_leaves_nothing_behind(client, tmp_path: Path) -> None:
    """Documents deleted while queued, parsing or embedding: workers find them gone, nothing comes back."""
    docs = [(f"race-{i}", f"Racing document {i}. ".encode() * 200, "text/plain") for i in range(8)]
    job = client.ingest_bytes(docs, collection=COLLECTION + "-race")
    deleted: list[int] = []
    for i, doc_id in enumerate(job.document_ids):  # spread over the pipeline's stages
        time.sleep(0.05 * i)
        deleted += [d.id for d in client.delete([doc_id], collection=COLLECTION + "-race")]
    assert sorted(deleted) == sorted(job.document_ids)
    sentinel = client.ingest_bytes([("sentinel", b"The sentinel arrives last.", "text/plain")],
                                   collection=COLLECTION + "-race")  # fmt: skip
    assert sentinel.wait(timeout_s=300) == {"ready": 1}
    time.sleep(3)  # a sweep (every 2 s in the test stack) finds nothing to resurrect
    with client.sessions.begin() as s:
        left = s.execute(
            text(
                "SELECT (SELECT count(*) FROM documents WHERE id = ANY(:ids)) + "
                "  (SELECT count(*) FROM chunks WHERE document_id = ANY(:ids)) + "
                "  (SELECT count(*) FROM embedding_queue WHERE document_id = ANY(:ids)) + "
                "  (SELECT count(*) FROM embeddings e "
                "   WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = e.chunk_id))"
            ),
            {"ids": deleted},
        ).scalar_one()
    assert left == 0
    assert job.wait(timeout_s=5) == {"deleted": len(deleted)}


def second_model(root: Path, minilm_dir: Path) -> Path:
    """Another model directory: MiniLM's weights with CLS pooling, so its vectors differ from the first model's."""
    target = root / "minilm-cls"
    target.mkdir()
    for item in minilm_dir.iterdir():
        if item.name != "1_Pooling":
            (target / item.name).symlink_to(item)
    (target / "1_Pooling").mkdir()
    config = json.loads((minilm_dir / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (target / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.slow  # ~2 min here: the embed worker's first use of a model measures its backends (auto)
def test_reindex_to_a_second_model_answers_from_the_old_model_until_the_switch(
    client, tmp_path: Path, minilm_dir: Path
) -> None:
    coll = COLLECTION + "-reindex"
    topics = ["apple harvest", "bridge cables", "canal locks", "elevator firmware", "glacier melt", "harbor cranes"]
    docs = [(f"r-{i}", f"Notes on {t}. The {t} were reviewed in detail.".encode(), "text/plain")
            for i, t in enumerate(topics)]  # fmt: skip
    assert client.ingest_bytes(docs, collection=coll).wait(timeout_s=300) == {"ready": len(docs)}
    query = "notes on the canal locks"

    def answer() -> list[tuple[int, float]]:
        hits = client.search(query, collection=coll, mode="vector", k=3)
        assert hits, "a search returned nothing"
        return [(h.chunk_id, round(h.score, 5)) for h in hits]

    old_model = client.reindex_status(coll).model
    before = answer()
    new_model = str(second_model(tmp_path, minilm_dir))
    started = time.perf_counter()
    progress = client.reindex(coll, model=new_model)
    assert progress.target in (new_model, None)
    during: list[list[tuple[int, float]]] = []
    deadline = time.monotonic() + 600
    while (status := client.reindex_status(coll)).target is not None:
        got = answer()
        if client.reindex_status(coll).target is not None:  # still not switched after the search: old model
            during.append(got)
        assert time.monotonic() < deadline
        time.sleep(0.2)
    switch_s = time.perf_counter() - started
    assert status.model == new_model
    assert all(d == before for d in during)
    after = answer()
    assert after != before and after[0][0] == before[0][0]  # another model's scores, the same best chunk
    print(f"\nreindex of {len(docs)} documents to a second model switched after {switch_s:.1f} s")
    assert client.drop_vectors(old_model, collection=coll) == len(docs)
    assert answer() == after


def test_rechunk_parses_stored_bytes_again_and_switches_once(stack, client) -> None:
    """CLI `reindex --rechunk`: smaller chunks from the stored bytes; every search meanwhile answers from one
    generation of chunks (the old until the switch, then the new), never nothing."""
    import threading

    from tests.e2e.test_pipeline import run_cli

    coll = COLLECTION + "-rechunk"
    topics = ["apple harvest", "bridge cables", "canal locks", "elevator firmware"]
    docs = [
        (f"k-{i}", " ".join(f"Paragraph {n} on the {t}: the {t} were measured, logged and reviewed." for n in range(12))
         .encode(), "text/plain")
        for i, t in enumerate(topics)
    ]  # fmt: skip
    job = client.ingest_bytes(docs, collection=coll)
    assert job.wait(timeout_s=300) == {"ready": len(docs)}

    def chunk_ids() -> dict[int, int]:
        with client.sessions.begin() as s:
            rows = s.execute(
                text("SELECT chunk_id, document_id FROM docpipe_chunks WHERE collection = :c"), {"c": coll}
            )
            return dict(rows.all())

    old = chunk_ids()
    answers: list[set[int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for mode in ("text", "vector"):
                answers.append({h.chunk_id for h in client.search("canal locks measured", collection=coll, mode=mode)})
            time.sleep(0.05)

    late = ("k-late", b"Paragraph on the harbor cranes: the harbor cranes were oiled. " * 12, "text/plain")
    ingested: list[int] = []
    late_ingest = threading.Timer(
        2.0, lambda: ingested.extend(client.ingest_bytes([late], collection=coll).document_ids)
    )
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    late_ingest.start()  # a document added while the rechunk runs is chunked with the new settings too
    out = run_cli(
        stack, "reindex", "--collection", coll, "--rechunk", "--chunk-max-tokens", "32", "--chunk-overlap", "0",
        "--wait", "--timeout", "300",
    )  # fmt: skip
    time.sleep(0.3)  # a few searches after the switch
    stop.set()
    poller.join(30)
    late_ingest.join()
    new = chunk_ids()
    assert "switched" in out.stderr, out.stderr
    assert ingested and set(job.document_ids) < set(new.values())  # the same documents, chunked again
    with client.sessions.begin() as s:  # the late one too, live from the switch on (by its twin if in flight)
        keys = s.execute(text("SELECT DISTINCT source FROM docpipe_chunks WHERE collection = :c"), {"c": coll})
        assert sorted(keys.scalars()) == sorted([key for key, _, _ in docs] + ["k-late"])
    assert len(new) >= 3 * (len(old) + 1) and not set(new) & set(old)
    assert client.status(coll)[coll]["chunks"] == len(new)
    with client.sessions.begin() as s:
        chunking = s.execute(text("SELECT chunking FROM collections WHERE name = :c"), {"c": coll}).scalar_one()
        assert (chunking["max_tokens"], chunking["overlap_tokens"]) == (32, 0)
        assert s.execute(text("SELECT max(token_count) FROM docpipe_chunks d JOIN chunks ch ON ch.id = d.chunk_id "
                              "WHERE d.collection = :c"), {"c": coll}).scalar_one() <= 32  # fmt: skip
    assert answers and all(a for a in answers), "a search returned nothing"
    # wholly new chunks, or none of them (the old ones, and the late document's before the switch)
    assert all(a <= set(new) or not a & set(new) for a in answers), "a search mixed old and new chunks"
    assert any(a <= set(new) for a in answers[-2:])
    print(f"\nrechunk of {len(docs)} documents: {len(old)} -> {len(new)} chunks, {len(answers)} searches meanwhile")


def test_readme_lifecycle_sql_runs(client) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Lifecycle") : readme.index("\n## ", readme.index("## Lifecycle") + 1)]
    statements = [
        stmt.strip()
        for block in re.findall(r"```postgresql\n(.*?)```", section, flags=re.S)
        for stmt in block.split(";\n")
        if stmt.strip() and not all(line.startswith("--") for line in stmt.strip().splitlines())
    ]
    assert len(statements) == 3
    coll = COLLECTION + "-sql"
    docs = [
        ("/srv/share/old/a.txt", b"Old report on the archive.", "text/plain"),
        ("/srv/share/empty.txt", b"", "text/plain"),  # refused at ingest: a problem with its reason
    ]
    job = client.ingest_bytes(docs, collection=coll)
    ops = [("/srv/share/ops.txt", b"Operations runbook for the night shift.", "text/plain")]
    job.document_ids += client.ingest_bytes(ops, collection=coll, metadata={"team": "ops"}).document_ids
    assert job.wait(timeout_s=300) == {"ready": 2, "failed": 1}
    with client.sessions.begin() as s:
        results = [s.execute(text(stmt.replace("'docs'", f"'{coll}'"))).all() for stmt in statements]
    assert [r[1] for r in results[0]] == ["/srv/share/old/a.txt"]
    assert [r[1] for r in results[1]] == ["/srv/share/ops.txt"]
    assert [(r.source, r.problem, r.reason) for r in results[2]] == [
        ("/srv/share/empty.txt", "failed", "empty file (0 bytes)")
    ]


def test_cli_sync_delete_update_problems(stack, client, tmp_path: Path) -> None:
    from tests.e2e.test_pipeline import run_cli

    coll = COLLECTION + "-cli"
    root = tmp_path / "cli-share"
    write(root, "keep.txt", "Kept notes about the lighthouse.")
    write(root, "old/drop.txt", "Dropped notes about the windmill.")
    write(root, "empty.txt", "")
    dry = run_cli(stack, "sync", str(root), "--collection", coll, "--dry-run")
    assert json.loads(dry.stdout.splitlines()[-1])["added"] == 3
    done = run_cli(stack, "sync", str(root), "--collection", coll, "--wait")
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "added": 3, "replaced": 0, "renamed": 0, "deleted": 0, "unchanged": 0, "failed": 1,
    }  # fmt: skip
    problems = json.loads(run_cli(stack, "problems", "--collection", coll, "--json").stdout)
    assert [(Path(p["source"]).name, p["problem"]) for p in problems] == [("empty.txt", "failed")]
    prefix = str(root.resolve() / "old") + "/"
    preview = json.loads(
        run_cli(stack, "delete", "--prefix", prefix, "--collection", coll, "--dry-run", "--json").stdout
    )
    assert [Path(d["source"]).name for d in preview] == ["drop.txt"]
    assert "drop.txt" in {Path(h.source).name for h in client.search("windmill", collection=coll, mode="text")}
    run_cli(stack, "delete", "--prefix", prefix, "--collection", coll)
    assert client.search("windmill", collection=coll, mode="text") == []
    run_cli(stack, "update-metadata", "--where", "{}", "--set", '{"site": "north"}', "--collection", coll)
    assert client.search("lighthouse", collection=coll, mode="text", where={"site": "north"})
    bad = run_cli(stack, "delete", "--collection", coll, check=False)
    assert bad.returncode == 2 and "select documents" in bad.stderr
