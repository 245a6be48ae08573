"""Lifecycle figures: sync of an unchanged folder against its first ingest; a reindex's switch and its searches.

    python -m docpipe.bench.lifecycle [--docs DIR] [--max-docs N] [--work DIR] [--skip-reindex]
                                      [--rechunk-max-tokens N]

1. The folder (the corpus's ok_text PDFs, copied to a work dir) is synced with
   `wait=True` (the first ingest), then synced again unchanged: the ratio of
   the two wall times.
2. The collection is reindexed to a second model directory (MiniLM's weights
   with CLS pooling: other vectors, same cost) while a thread searches it in a
   loop. Figures: seconds from the last new vector written to the switch (as
   polled every 20 ms), and searches whose hits lie closer to the other model's
   exact neighbours than to the model that should answer (old before the
   switch, new after), or to neither: must be 0.
3. The collection is rechunked (`--rechunk-max-tokens`, no overlap) while a
   thread searches it (vector and keyword) in a loop. Figures: seconds from the
   last document re-chunked and embedded to the switch (polled every 20 ms),
   and searches whose hits mix old and new chunks, or that return chunks of the
   generation that should not answer (old after the switch, new before), or
   nothing: must be 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

from docpipe.bench.common import machine_info, minilm_dir
from docpipe.bench.corpus import default_docs, manifest_class
from docpipe.bench.harness import running_stack

COLLECTION = "bench-lifecycle"
QUERIES = ["how is the document structured", "results of the evaluation", "installation instructions"]


def copy_folder(docs: Path, target: Path, max_docs: int) -> list[Path]:
    wanted = manifest_class(docs)
    files = sorted(p for p in docs.glob("*.pdf") if wanted is None or p.name in wanted)[:max_docs]
    target.mkdir(parents=True)
    for path in files:
        shutil.copy(path, target / path.name)
    return files


def second_model(work: Path) -> Path:
    """MiniLM's files with CLS pooling instead of mean pooling: a different model of the same size."""
    source, target = minilm_dir(), work / "minilm-cls"
    target.mkdir()
    for item in source.iterdir():
        if item.name != "1_Pooling":
            (target / item.name).symlink_to(item)
    (target / "1_Pooling").mkdir()
    config = json.loads((source / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (target / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return target


def measure_sync(client, folder: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    first = client.sync(folder, collection=COLLECTION, wait=True, timeout_s=3600)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = client.sync(folder, collection=COLLECTION)
    again_s = time.perf_counter() - t0
    return {
        "documents": len(first.plan.add),
        "first_ingest_s": round(first_s, 3),
        "unchanged_sync_s": round(again_s, 4),
        "ratio": round(again_s / first_s, 5),
        "unchanged": again.summary()["unchanged"],
    }


def answers(client) -> tuple[tuple[int, ...], ...]:
    return tuple(
        tuple(h.chunk_id for h in client.search(q, collection=COLLECTION, mode="vector", k=5)) for q in QUERIES
    )


def exact_top(client, model: str, n: int = 20) -> list[list[int]]:
    """Each query's exact nearest `n` chunks under `model` (sequential scan, no index), ready versions only."""
    from sqlalchemy import text

    from docpipe.search import vector_literal

    out = []
    for q in QUERIES:
        vec = vector_literal(client.embedder(model).embed_query(q))
        with client.sessions.begin() as s:
            s.execute(text("SET LOCAL enable_indexscan = off"))
            rows = s.execute(
                text(
                    "SELECT ch.id FROM embeddings e JOIN chunks ch ON ch.id = e.chunk_id "
                    "JOIN documents d ON d.id = ch.document_id JOIN collections c ON c.id = d.collection_id "
                    "JOIN embedding_models m ON m.id = e.model_id "
                    "WHERE c.name = :c AND m.name = :m AND d.state = 'ready' "
                    "ORDER BY e.embedding <=> CAST(:q AS vector) LIMIT :n"
                ),
                {"c": COLLECTION, "m": model, "q": vec, "n": n},
            ).scalars()
            out.append(list(rows))
    return out


def model_of(answer: tuple[int, ...], old: list[int], new: list[int]) -> str:
    """Which model's exact neighbourhood a hit list belongs to ("none": in neither's top 20)."""
    o, n = len(set(answer) & set(old)), len(set(answer) & set(new))
    return "old" if o > n else "new" if n > o else "none" if o == 0 else "tie"


def measure_reindex(client, model: Path) -> dict[str, object]:
    """Searches run in a loop during a reindex; each must answer from the old model before the switch, new after."""
    old_model = client.reindex_status(COLLECTION).model
    before = answers(client)
    seen: list[tuple[float, float, tuple]] = []  # (started, ended, answer)
    stop = threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            got = answers(client)
            seen.append((t, time.perf_counter(), got))

    searcher = threading.Thread(target=search_loop, daemon=True)
    t0 = time.perf_counter()
    client.reindex(COLLECTION, model=str(model))
    searcher.start()
    all_embedded, last_unswitched = None, time.perf_counter()
    while (status := client.reindex_status(COLLECTION)).target is not None:
        last_unswitched = time.perf_counter()
        if all_embedded is None and status.embedded >= status.chunks:
            all_embedded = last_unswitched
        time.sleep(0.02)
    switched = time.perf_counter()  # the switch committed between last_unswitched and now
    time.sleep(1.0)
    stop.set()
    searcher.join()
    after = answers(client)
    exact_old, exact_new = exact_top(client, old_model), exact_top(client, str(model))
    wrong, empty, ambiguous = 0, 0, 0
    for started, ended, got in seen:
        expected = "old" if ended < last_unswitched else "new" if started > switched else None
        ambiguous += expected is None
        empty += not all(got)
        sides = [model_of(a, o, n) for a, o, n in zip(got, exact_old, exact_new, strict=True)]
        wrong += any(side in ("none", "tie") or (expected is not None and side != expected) for side in sides)
    return {
        "chunks": status.chunks,
        "reindex_to_switch_s": round(switched - t0, 2),
        "last_vector_to_switch_s": round(switched - (all_embedded or switched), 3),
        "searches": len(seen),
        "searches_spanning_the_switch": ambiguous,
        "searches_wrong_model_or_stale": wrong,
        "searches_empty": empty,
        "distinct_answers": len({a for _, _, a in seen}),
        "before_equals_exact_old_top5": [list(b) == e[:5] for b, e in zip(before, exact_old, strict=True)],
        "after_equals_exact_new_top5": [list(a) == e[:5] for a, e in zip(after, exact_new, strict=True)],
    }


def chunk_ids(client) -> set[int]:
    from sqlalchemy import text

    with client.sessions.begin() as s:
        rows = s.execute(text("SELECT chunk_id FROM docpipe_chunks WHERE collection = :c"), {"c": COLLECTION})
        return set(rows.scalars())


def _answers_by_mode(client) -> list[set[int]]:
    """Each (query, mode)'s hit chunk ids: the vector and the keyword side of every query."""
    return [
        {h.chunk_id for h in client.search(q, collection=COLLECTION, mode=mode, k=5)}
        for q in QUERIES
        for mode in ("vector", "text")
    ]


def measure_rechunk(client, max_tokens: int) -> dict[str, object]:
    """Searches run in a loop during a rechunk; each must answer from the old chunks before the switch, new after."""
    old_ids = chunk_ids(client)
    answered = [bool(a) for a in _answers_by_mode(client)]  # (query, mode)s with hits before: must keep some
    seen: list[tuple[float, float, list[set[int]]]] = []  # (started, ended, each (query, mode)'s hits)
    stop = threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            got = _answers_by_mode(client)
            seen.append((t, time.perf_counter(), got))

    searcher = threading.Thread(target=search_loop, daemon=True)
    t0 = time.perf_counter()
    status = client.reindex(COLLECTION, rechunk={"max_tokens": max_tokens, "overlap_tokens": 0})
    searcher.start()
    documents = status.rechunk.documents if status.rechunk else 0
    all_done, last_unswitched = None, time.perf_counter()
    while (status := client.reindex_status(COLLECTION)).target is not None:
        last_unswitched = time.perf_counter()
        if status.rechunk and status.rechunk.failed:
            raise SystemExit(f"re-parse failed: {status.rechunk.failed}")
        if all_done is None and status.rechunk and status.rechunk.done >= status.rechunk.documents:
            all_done = last_unswitched
        time.sleep(0.02)
    switched = time.perf_counter()
    time.sleep(1.0)
    stop.set()
    searcher.join()
    new_ids = chunk_ids(client)
    mixed = wrong = empty = ambiguous = 0
    for started, ended, got in seen:
        expected = "old" if ended < last_unswitched else "new" if started > switched else None
        ambiguous += expected is None
        for hits, had in zip(got, answered, strict=True):
            empty += had and not hits
            side = "old" if hits <= old_ids else "new" if hits <= new_ids else "mixed"
            mixed += side == "mixed"
            # a round spanning the switch may see old answers, then new ones: each answer is still whole
            wrong += expected is not None and bool(hits) and side != expected
    return {
        "documents": documents,
        "chunks_before": len(old_ids),
        "chunks_after": len(new_ids),
        "rechunk_to_switch_s": round(switched - t0, 2),
        "last_document_to_switch_s": round(switched - (all_done or switched), 3),
        "search_rounds": len(seen),
        "answers_per_round": len(answered),
        "answers_empty_before": answered.count(False),
        "rounds_spanning_the_switch": ambiguous,
        "answers_mixing_generations": mixed,
        "answers_from_the_wrong_generation": wrong,
        "answers_empty_that_were_not_before": empty,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=default_docs())
    parser.add_argument("--max-docs", type=int, default=40)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--skip-reindex", action="store_true", help="no model reindex (sync and rechunk only)")
    parser.add_argument("--rechunk-max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="docpipe-bench-lifecycle-"))
    folder = work / "share"
    copy_folder(args.docs, folder, args.max_docs)
    out: dict[str, object] = {"machine": machine_info()}
    with running_stack(work) as run:
        out["sync"] = measure_sync(run.client, folder)
        if not args.skip_reindex:
            out["reindex"] = measure_reindex(run.client, second_model(work))
        out["rechunk"] = measure_rechunk(run.client, args.rechunk_max_tokens)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
