"""Helpers the store-level tests share: parsed documents straight into the queue, and what each search path finds."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sqlalchemy import text

from docpipe import store
from docpipe.types import Chunk


def seed_parsed(
    sessions,
    model: str,
    name: str,
    texts: list[list[str]],
    *,
    dim: int,
    tokens: Callable[[int], int] = lambda ordinal: 10,
) -> list[int]:
    """Collection `name` of `model`, one document per list of chunk texts (chunk j on page j + 1,
    `tokens(j)` tokens), each parsed and queued for embedding; the documents' ids."""
    with sessions.begin() as s:
        coll = store.ensure_collection(s, name, model=model, dim=dim)
        rows = store.insert_documents(
            s,
            coll.id,
            [
                store.NewDocument(
                    f"/{name}/{i}", hashlib.sha256(f"{name}{i}".encode()).digest(), "text/plain", b"x", 1, {}
                )
                for i in range(len(texts))
            ],
        )
    ids = []
    for (doc_id, _), chunk_texts in zip(rows, texts, strict=True):
        with sessions.begin() as s:
            doc = store.claim_for_parse(s, doc_id, lease_s=60)
            chunks = [Chunk(j, t, tokens(j), j + 1, j + 1) for j, t in enumerate(chunk_texts)]
            store.save_chunks(s, doc, chunks, page_count=len(chunks))
        ids.append(doc_id)
    return ids


def found_by_each_path(
    sessions, collection: str, *, words: str, dim: int, per_term: int = 0
) -> tuple[set[str], set[str], set[str]]:
    """Chunk texts of `collection` found by the `docpipe_chunks` view, by BM25 for `words` (`per_term`:
    postings read per term, 0 automatic, -1 all) and by vector search."""
    with sessions.begin() as s:
        view = set(
            s.execute(text("SELECT text FROM docpipe_chunks WHERE collection = :c"), {"c": collection}).scalars()
        )
        keyword = set(
            s.execute(
                text(
                    "SELECT ch.text FROM docpipe_text_search(:q, :c, 1000, per_term => :p) t "
                    "JOIN chunks ch ON ch.id = t.chunk_id"
                ),
                {"q": words, "c": collection, "p": per_term},
            ).scalars()
        )
        vector = set(
            s.execute(
                text("SELECT text FROM docpipe_search(CAST(:v AS vector), :c, 1000)"),
                {"v": "[" + ",".join(["0.1"] * dim) + "]", "c": collection},
            ).scalars()
        )
    return view, keyword, vector
