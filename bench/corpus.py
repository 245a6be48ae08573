"""The benchmark's documents and real chunks, made by docpipe's own (sandboxed) parser and chunker."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from docpipe.chunk_context import embedded_text
from docpipe.config import Settings
from docpipe.types import Chunk

REPO = Path(__file__).resolve().parent.parent


def default_docs() -> Path:
    """`$DOCPIPE_CORPUS/pdf`, else `../shared/corpus/pdf` beside the repo, else the README."""
    env = os.environ.get("DOCPIPE_CORPUS")
    for candidate in (*([Path(env) / "pdf"] if env else []), REPO.parent / "shared" / "corpus" / "pdf"):
        if candidate.is_dir():
            return candidate
    return REPO / "README.md"


@dataclass
class ParsedFile:
    """One input file as docpipe parses and chunks it; `error` set when it would fail."""

    path: Path
    media_type: str
    size: int
    pages: int = 0
    chunks: list[Chunk] = field(default_factory=list)
    error: str | None = None

    @property
    def tokens(self) -> int:
        return sum(c.token_count for c in self.chunks)


def parse_corpus(docs: Path, settings: Settings, only: set[str] | None = None) -> list[ParsedFile]:
    """Parse and chunk every supported file under `docs` (named in `only`, when given) like a parse
    worker does: sandboxed child, OCR per `settings.ocr` (the corpus's scans are hours of OCR here,
    so callers that drop them pass `only`)."""
    from docpipe.chunk import chunk_document, chunk_tokenizer
    from docpipe.loading import collect_files
    from docpipe.parse import SandboxedParser

    tok = chunk_tokenizer(settings.embed.model, settings.model_cache_dir, settings.chunk.max_tokens)
    entries, _skipped = collect_files([docs], max_bytes=settings.parse.max_bytes)
    out: list[ParsedFile] = []
    with SandboxedParser(settings.parse, ocr=settings.ocr) as parser:
        for entry in sorted(entries, key=lambda e: str(e.path)):
            if only is not None and entry.path.name not in only:
                continue
            item = ParsedFile(entry.path, entry.media_type, entry.size, error=entry.problem)
            out.append(item)
            if item.error:
                continue
            try:
                parsed = parser.parse(entry.path.read_bytes(), entry.media_type)
                item.pages = parsed.page_count
                item.chunks = chunk_document(
                    parsed.blocks, tok, overlap_tokens=settings.chunk.overlap_tokens, title=parsed.title
                )
            except Exception as exc:  # any parser failure: the pipeline fails this document too
                item.error = f"{type(exc).__name__}: {exc}"
    return out


def sample_texts(files: list[ParsedFile], n: int) -> list[str]:
    """`n` chunk texts spread evenly over the whole corpus (every document contributes in proportion)."""
    texts = [embedded_text(c.context, c.text) for f in files for c in f.chunks]  # what the model sees
    if len(texts) <= n:
        return texts
    step = len(texts) / n
    return [texts[int(i * step)] for i in range(n)]


def select_documents(files: list[ParsedFile], token_budget: int | None) -> list[ParsedFile]:
    """Files in name order whose chunks fit `token_budget` tokens together (None: all).

    Files that yield no chunks (broken, encrypted, image-only) cost no embedding and are always kept,
    so the failure paths stay in the measurement.
    """
    if token_budget is None:
        return list(files)
    chosen, used = [], 0
    for f in files:
        if used + f.tokens <= token_budget:
            chosen.append(f)
            used += f.tokens
    return chosen


def manifest_class(docs: Path, wanted: str = "ok_text") -> set[str] | None:
    """File names of class `wanted` in the shared corpus MANIFEST.tsv beside `docs`; None without a manifest."""
    import csv

    manifest = docs.parent / "MANIFEST.tsv"
    if not manifest.is_file():
        return None
    with manifest.open(encoding="utf-8") as fh:
        return {Path(r["file"]).name for r in csv.DictReader(fh, delimiter="\t") if r["class"] == wanted}
