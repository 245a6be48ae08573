"""Small documents parsed several per task (`processing.parse_documents`): one claim, one write, and a
document's failure (permanent, transient, a crashed parser, a database error) costs only that document."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
from sqlalchemy import text

from docpipe import processing, store
from docpipe.config import ParseLimits, Settings
from docpipe.parse import SandboxedParser
from docpipe.parse.child import CRASH_TYPE

_names = itertools.count()
TEXTS = [
    f"Abstract {i}. " + " ".join(f"Finding {j} of study {i} on protein folding." for j in range(40)) for i in range(5)
]


@pytest.fixture(scope="module")
def parser():
    with SandboxedParser(ParseLimits(timeout_s=60), env={"DOCPIPE_SANDBOX_TEST_HOOKS": "1"}) as p:
        yield p


def stored(sessions, model: str, docs: list[tuple[bytes, str]]) -> list[int]:
    """A new collection of `model` holding these (content, media type) documents, queued; their ids."""
    name = f"batch{next(_names)}"
    with sessions.begin() as s:
        coll = store.ensure_collection(s, name, model=model, dim=384)
        rows = store.insert_documents(
            s,
            coll.id,
            [
                store.NewDocument(f"/{name}/{i}", hashlib.sha256(body).digest(), media, body, len(body), {})
                for i, (body, media) in enumerate(docs)
            ],
        )
    return [doc_id for doc_id, _ in rows]


def states_of(sessions, ids: list[int]) -> list[tuple[str, int, str | None]]:
    with sessions.begin() as s:
        rows = s.execute(
            text("SELECT id, state, attempts, last_error FROM documents WHERE id = ANY(:ids)"), {"ids": ids}
        ).all()
    by_id = {r.id: (r.state, r.attempts, r.last_error) for r in rows}
    return [by_id[i] for i in ids]


def chunk_texts(sessions, doc_id: int) -> list[str]:
    with sessions.begin() as s:
        return list(
            s.execute(text("SELECT text FROM chunks WHERE document_id = :d ORDER BY ordinal"), {"d": doc_id}).scalars()
        )


def test_a_batch_stores_the_same_chunks_as_one_document_per_task(
    sessions, parser, minilm_dir: Path, tmp_path: Path
) -> None:
    run = dict(sessions=sessions, parser=parser, settings=Settings(data_dir=tmp_path))
    docs = [(t.encode(), "text/plain") for t in TEXTS]
    alone = stored(sessions, str(minilm_dir), docs)
    for doc_id in alone:
        assert processing.parse_document(doc_id, **run).state == "embedding"
    batch = stored(sessions, str(minilm_dir), docs)

    done = processing.parse_documents(batch, token="batch-task", **run)

    assert done.retry is None
    assert sorted(o.document_id for o in done.outcomes) == batch
    assert {o.state for o in done.outcomes} == {"embedding"}
    assert {m for o in done.outcomes for m in o.models} == {str(minilm_dir)}
    for one, many in zip(alone, batch, strict=True):
        assert chunk_texts(sessions, many) == chunk_texts(sessions, one) != []
    with sessions.begin() as s:
        queued = s.execute(
            text("SELECT count(*) FROM embedding_queue WHERE document_id = ANY(:ids)"), {"ids": batch}
        ).scalar()
        postings = s.execute(
            text("SELECT count(DISTINCT chunk_id) FROM chunk_terms t JOIN chunks c ON c.id = t.chunk_id "
                 "WHERE c.document_id = ANY(:ids)"),
            {"ids": batch},
        ).scalar()  # fmt: skip
    assert queued == postings == sum(o.chunks for o in done.outcomes)
    assert processing.parse_documents(batch, token="another-task", **run).outcomes == [
        processing.ParseOutcome(d, "skipped") for d in batch
    ]  # settled documents are not claimed again


def test_a_bad_document_costs_only_itself(sessions, parser, minilm_dir: Path, tmp_path: Path) -> None:
    run = dict(sessions=sessions, parser=parser, settings=Settings(data_dir=tmp_path))
    _, corrupt, crash, ok2 = ids = stored(
        sessions,
        str(minilm_dir),
        [
            (TEXTS[0].encode(), "text/plain"),
            (b"%PDF-1.7\n this is not a PDF at all", "application/pdf"),
            (b"boom", CRASH_TYPE),  # the parser child dies on it
            (TEXTS[1].encode(), "text/plain"),
        ],
    )

    done = processing.parse_documents(ids, token="t", **run)

    assert done.retry is None
    settled = {o.document_id: o for o in done.outcomes}
    assert [settled[d].state for d in ids] == ["embedding", "failed", "failed", "embedding"]
    after = states_of(sessions, ids)
    assert "cannot open PDF" in after[1][2] and "parser crashed" in after[2][2]
    assert chunk_texts(sessions, ok2) != []  # parsed by the fresh child that replaced the crashed one
    assert chunk_texts(sessions, corrupt) == chunk_texts(sessions, crash) == []


def test_a_database_error_in_the_batch_write_sends_every_document_back(
    sessions, parser, faults, minilm_dir: Path, tmp_path: Path
) -> None:
    run = dict(sessions=sessions, parser=parser, settings=Settings(data_dir=tmp_path))
    ids = stored(sessions, str(minilm_dir), [(t.encode(), "text/plain") for t in TEXTS[:3]])
    faults("chunks", ids[1], 1)  # the COPY fails half-way, at the second document's chunks

    first = processing.parse_documents(ids, token="t", **run)

    assert first.outcomes == [] and "injected fault on chunks" in str(first.retry)
    assert [(s, a) for s, a, _ in states_of(sessions, ids)] == [("queued", 1)] * 3
    assert all(chunk_texts(sessions, d) == [] for d in ids)  # nothing of the batch was written

    retry = processing.parse_documents(ids, token="t", **run)

    assert retry.retry is None and {o.state for o in retry.outcomes} == {"embedding"}
    assert [(s, a, e) for s, a, e in states_of(sessions, ids)] == [("embedding", 2, None)] * 3
