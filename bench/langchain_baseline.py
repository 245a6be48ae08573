"""Measurement 4: docpipe's ingest throughput against the LangChain pipeline a user would write instead.

PyMuPDFLoader → RecursiveCharacterTextSplitter(1000, 100) → HuggingFaceEmbeddings (the same local
model) → PGVector in the same Postgres, own tables. `langchain_postgres.PGVector` when installed,
else the older `langchain_community.vectorstores.PGVector` (langchain-postgres needs pgvector<0.4,
which conflicts with docpipe's pgvector).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from docpipe.bench.common import Goal, Section, minilm_dir, ratio

INSTALL_HINT = (
    "pip freeze --exclude-editable > /tmp/constraints.txt && pip install -c /tmp/constraints.txt "
    "langchain-community langchain-huggingface langchain-text-splitters   (the `bench` extra lists them)"
)
CHUNK_SIZE = 1000  # characters, LangChain's usual example
CHUNK_OVERLAP = 100  # characters
COLLECTION = "bench_langchain"


def langchain_missing() -> str | None:
    """Why the baseline cannot run here, or None."""
    try:
        import langchain_community.document_loaders  # noqa: F401
        import langchain_huggingface  # noqa: F401
        import langchain_text_splitters  # noqa: F401
    except ImportError as exc:
        return f"LangChain is not installed ({exc.name}); ratio skipped. Install with: {INSTALL_HINT}"
    return None


def _vector_store_class():
    """(class, import path): langchain-postgres's PGVector when present, else langchain-community's."""
    try:
        from langchain_postgres import PGVector

        return PGVector, "langchain_postgres.PGVector"
    except ImportError:
        from langchain_community.vectorstores.pgvector import PGVector

        return PGVector, "langchain_community.vectorstores.PGVector"


def _open_store(cls, embeddings, url: str):
    if cls.__module__.startswith("langchain_postgres"):
        return cls(embeddings=embeddings, collection_name=COLLECTION, connection=url, pre_delete_collection=True)
    return cls(
        connection_string=url, embedding_function=embeddings, collection_name=COLLECTION, pre_delete_collection=True
    )


def run_langchain(paths: list[Path], database_url: str) -> dict[str, float | int | str]:
    """Load, split, embed and store `paths` the LangChain way; returns times and counts."""
    from langchain_community.document_loaders import PyMuPDFLoader
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    cls, cls_name = _vector_store_class()
    embeddings = HuggingFaceEmbeddings(model_name=str(minilm_dir()), encode_kwargs={"batch_size": 32})
    embeddings.embed_documents(["warm-up"] * 32)  # model load and first-call costs stay outside the timing
    store = _open_store(cls, embeddings, database_url)
    splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)

    t0 = time.perf_counter()
    pages, unreadable = [], 0
    for path in paths:
        try:  # a user's loop has to survive encrypted and broken files
            pages.extend(PyMuPDFLoader(str(path)).load())
        except Exception:
            unreadable += 1
    for page in pages:  # PostgreSQL text cannot hold NUL; without this the store rejects the whole batch
        page.page_content = page.page_content.replace("\x00", "")
    chunks = [c for c in splitter.split_documents(pages) if c.page_content.strip()]
    t_split = time.perf_counter()
    if chunks:
        store.add_documents(chunks)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "load_split_s": t_split - t0,
        "pages": len(pages),
        "chunks": len(chunks),
        "unreadable_files": unreadable,
        "vector_store": cls_name,
        "texts": [c.page_content for c in chunks],  # type: ignore[dict-item]
    }


FIRST_RUN_GOAL = 1.5  # LangChain wall ÷ docpipe wall, fresh data dir and machine cache
WARM_GOAL = 2.25  # the same after a warm-up


def measure_langchain(paths: list[Path], *, database_url: str, docpipe_walls: dict[str, float], tokenizer) -> Section:
    """LangChain wall ÷ docpipe wall for each docpipe run (first run, warm), same files, same Postgres."""
    section = Section(
        "langchain",
        "docpipe ingest vs a LangChain pipeline",
        "LangChain PyMuPDFLoader + RecursiveCharacterTextSplitter + HuggingFaceEmbeddings + PGVector = 1.0",
    )
    if (why := langchain_missing()) is not None:
        section.skipped = why
        return section
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LangChain's deprecation notices
        result = run_langchain(paths, database_url)
    texts = result.pop("texts")
    tokens = sum(min(len(e.ids), 256) for e in tokenizer.encode_batch(list(texts)))
    goals = {"first run": FIRST_RUN_GOAL, "warm": WARM_GOAL}
    for run, wall in docpipe_walls.items():
        speedup = ratio(result["wall_s"], wall)
        section.add(f"LangChain wall ÷ docpipe wall ({run})", round(speedup or 0, 3), "x", f"docpipe {wall:.2f} s")
        if run in goals:
            section.goals.append(Goal(f"LangChain wall ÷ docpipe wall, {run}", speedup, goals[run], op=">="))
    section.add(
        "LangChain wall",
        round(float(result["wall_s"]), 2),
        "s",
        f"load+split {float(result['load_split_s']):.2f} s, rest embed+store",
    )
    section.add("LangChain pages / chunks", f"{result['pages']} / {result['chunks']}")
    section.add("LangChain tokens embedded (≤256 each)", tokens)
    section.add("LangChain tokens/s", round(tokens / float(result["wall_s"]), 1), "tokens/s")
    section.add("files LangChain could not open", result["unreadable_files"], "", "skipped by its loop")
    section.notes.append(
        f"vector store: {result['vector_store']}; embeddings model loaded and warmed before timing; "
        "NUL characters stripped from page text (PostgreSQL rejects them)"
    )
    section.data.update(result)
    return section
