"""`python -m docpipe.bench.ocr`: OCR accuracy, coverage, speed and pipeline overhead, measured in one run.

- Accuracy: pages of the corpus's `ok_text` PDFs rendered at `ocr.dpi` and read by OCR (the
  production path: forked helper, per-page limit), against PyMuPDF's text layer of the same page:
  character and word error rates (Levenshtein / reference length; NFKC, whitespace collapsed).
  Reading-order differences (columns, tables, headers) count as errors, so these are upper bounds.
- Coverage: `ok_little_text` files (scans, image-heavy) parsed with OCR off and with OCR on.
- Speed: OCR pages per second per core (CPU seconds of the helpers) and per wall second.
- Pipeline: a scanned set (image-only PDFs made from `ok_text` pages) ingested on an embedded stack,
  wall time to all-ready vs pure OCR of the same pages in this process; then a phrase of each
  scanned document is searched for (found in the top 3?).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import pymupdf

from docpipe.bench.common import machine_info
from docpipe.bench.corpus import REPO
from docpipe.config import OcrConfig, ParseLimits
from docpipe.parse.ocr_pages import read_pages
from docpipe.parse.pdf import render_page, silence_mupdf

MIN_REFERENCE_CHARS = 200  # pages with less text-layer text are skipped for accuracy (ratios too noisy)
# Real scans of the corpus (no text layer) and a phrase read off each page image by eye.
EYE_PHRASES = [
    ("pdf/pymupdf__tests__resources__test_3863.pdf", "Bitumen und Kunststoff"),  # a German pipe-laying form
    ("pdf/pymupdf__tests__resources__test_4034.pdf", "Solicitação de Empenho"),  # a Brazilian purchase order
    ("pdf/pdfjs__test__pdfs__issue5481.pdf", "4K72"),  # a taxi's roof sign in a street photo
]


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance of two sequences (Myers/Hyyrö bit-parallel: O(len(a)) big-integer steps)."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict = {}
    for i, item in enumerate(b):
        peq[item] = peq.get(item, 0) | (1 << i)
    full, top = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = full, 0, m
    for item in a:
        eq = peq.get(item, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & full)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = mh | (~(xv | ph) & full)
        mv = ph & xv
    return score


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def manifest(corpus: Path) -> list[dict[str, str]]:
    lines = (corpus / "MANIFEST.tsv").read_text().splitlines()
    names = lines[0].split("\t")
    return [dict(zip(names, line.split("\t"), strict=False)) for line in lines[1:]]


def accuracy_pages(corpus: Path, want: int, per_file: int, skip: int = 0) -> list[tuple[Path, int, str]]:
    """(pdf, page, reference text) for `want` text-layer pages of at least `MIN_REFERENCE_CHARS`,
    spread over the files: every file's first eligible page, then every file's second, ... up to
    `per_file` from each, after each file's first `skip` eligible pages."""
    silence_mupdf()
    per_pdf: list[list[tuple[Path, int, str]]] = []
    for row in manifest(corpus):
        if row["class"] != "ok_text" or "SLOW" in row.get("note", "") or not row["file"].endswith(".pdf"):
            continue
        eligible: list[tuple[Path, int, str]] = []
        with pymupdf.open(corpus / row["file"]) as doc:
            for index in range(doc.page_count):
                reference = normalise(doc.load_page(index).get_text(sort=True))
                if len(reference) >= MIN_REFERENCE_CHARS:
                    eligible.append((corpus / row["file"], index + 1, reference))
                if len(eligible) == skip + per_file:
                    break
        per_pdf.append(eligible[skip:])
    by_rank = [pages[rank] for rank in range(per_file) for pages in per_pdf if rank < len(pages)]
    return by_rank[:want]


def ocr_file_pages(path: Path, pages: list[int], config: OcrConfig) -> dict[int, tuple[str, str | None]]:
    with pymupdf.open(path) as doc:
        results = read_pages(lambda page: render_page(doc, page, config.dpi), pages, config)
        return {r.page: (normalise(" ".join(text for text, _ in r.blocks)), r.error) for r in results}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_accuracy(corpus: Path, want: int, per_file: int, config: OcrConfig, skip: int = 0) -> dict:
    chosen = accuracy_pages(corpus, want, per_file, skip)
    by_file: dict[Path, list[tuple[int, str]]] = {}
    for path, page, reference in chosen:
        by_file.setdefault(path, []).append((page, reference))
    cers, wers, errors = [], [], []
    cpu0, wall0 = children_cpu_s(), time.perf_counter()
    for path, items in by_file.items():
        read = ocr_file_pages(path, [page for page, _ in items], config)
        for page, reference in items:
            got, error = read.get(page, ("", "missing"))
            if error:
                errors.append(f"{path.name} p{page}: {error}")
            cers.append(levenshtein(got, reference) / len(reference))
            ref_words = reference.split()
            wers.append(levenshtein(got.split(), ref_words) / max(len(ref_words), 1))
        print(f"accuracy: {len(cers)}/{len(chosen)} pages, {time.perf_counter() - wall0:.0f} s", file=sys.stderr)
    cpu, wall = children_cpu_s() - cpu0, time.perf_counter() - wall0
    q = lambda xs, p: statistics.quantiles(xs, n=10)[p - 1] if len(xs) >= 10 else max(xs)  # noqa: E731
    return {
        "pages": len(chosen),
        "files": len(by_file),
        "min_reference_chars": MIN_REFERENCE_CHARS,
        "max_pages_per_file": max(len(items) for items in by_file.values()),
        "cer_median": round(statistics.median(cers), 4),
        "cer_p90": round(q(cers, 9), 4),
        "wer_median": round(statistics.median(wers), 4),
        "wer_p90": round(q(wers, 9), 4),
        "page_errors": errors[:20],
        "ocr_cpu_s": round(cpu, 1),
        "ocr_wall_s": round(wall, 1),
        "pages_per_cpu_s": round(len(chosen) / cpu, 3) if cpu else None,
        "s_per_page_wall": round(wall / len(chosen), 2),
        "per_page_cer": [round(c, 4) for c in cers],
        "per_page_wer": [round(w, 4) for w in wers],
    }


def measure_coverage(corpus: Path, config: OcrConfig, limits: ParseLimits) -> dict:
    """How many `ok_little_text` files yield text with OCR off and on, and how many pages OCR read."""
    from docpipe.parse import SandboxedParser, detect_media_type

    rows = [r for r in manifest(corpus) if r["class"] == "ok_little_text"]
    with_text = {"off": 0, "on": 0}
    ocr_pages, failed = 0, []
    wall0 = time.perf_counter()
    with SandboxedParser(limits) as off, SandboxedParser(limits, ocr=config) as on:
        for row in rows:
            data = (corpus / row["file"]).read_bytes()
            media_type = detect_media_type(row["file"], data[:4096]) or "application/pdf"
            for name, parser in (("off", off), ("on", on)):
                try:
                    doc = parser.parse(data, media_type)
                except Exception as err:
                    if name == "on":
                        failed.append(f"{row['file']}: {err}"[:200])
                    continue
                with_text[name] += bool(doc.blocks)
                if name == "on":
                    ocr_pages += len({b.page for b in doc.blocks if b.ocr_confidence is not None})
    return {
        "files": len(rows),
        "with_text_ocr_off": with_text["off"],
        "with_text_ocr_on": with_text["on"],
        "pages_read_by_ocr": ocr_pages,
        "failed_with_ocr": failed[:20],
        "wall_s": round(time.perf_counter() - wall0, 1),
    }


def scanned_set(corpus: Path, folder: Path, docs: int, pages: int, dpi: int) -> list[tuple[Path, str]]:
    """Image-only PDFs made from `ok_text` pages, with a 4-word phrase from the middle of each."""
    made = []
    for path, _, reference in accuracy_pages(corpus, docs * pages * 3, pages)[:: pages * 3][:docs]:
        with pymupdf.open(path) as src, pymupdf.open() as out:
            for index in range(min(pages, src.page_count)):
                png = src.load_page(index).get_pixmap(dpi=dpi).tobytes("png")
                page = out.new_page(width=src.load_page(index).rect.width, height=src.load_page(index).rect.height)
                page.insert_image(page.rect, stream=png)
            target = folder / f"scan-{path.stem[:40]}.pdf"
            out.save(target)
        words = [w for w in reference.split() if w.isalpha() and len(w) > 2]
        made.append((target, " ".join(words[len(words) // 2 : len(words) // 2 + 4])))
    return made


def distractors(corpus: Path, count: int) -> list[Path]:
    """Text PDFs that share the collection with the scans, so a top-3 hit means something."""
    rows = [r for r in manifest(corpus) if r["class"] == "ok_text" and "SLOW" not in r.get("note", "")]
    return [corpus / r["file"] for r in rows[:count]]


def measure_pipeline(corpus: Path, work: Path, config: OcrConfig, docs: int, pages: int) -> dict:
    from docpipe.bench.harness import running_stack

    folder = work / "scans"
    folder.mkdir()
    made = scanned_set(corpus, folder, docs, pages, dpi=150)
    paths = [path for path, _ in made]
    wall0 = time.perf_counter()
    for path in paths:
        with pymupdf.open(path) as doc:
            ocr_file_pages(path, list(range(1, doc.page_count + 1)), config)
    pure = time.perf_counter() - wall0
    with running_stack(work / "run") as run:
        t0 = time.perf_counter()
        job = run.client.ingest(paths, collection="ocr-bench")
        counts = job.wait(timeout_s=3600)
        ingest = time.perf_counter() - t0
        eye = [corpus / name for name, _ in EYE_PHRASES]
        others = distractors(corpus, 30)
        run.client.ingest([*eye, *others], collection="ocr-bench").wait(timeout_s=3600)
        found = []
        queries = [(path, phrase, False) for path, phrase in made]
        queries += [(path, phrase, True) for path, (_, phrase) in zip(eye, EYE_PHRASES, strict=True)]
        for path, phrase, by_eye in queries:
            hits = run.client.search(phrase, collection="ocr-bench", k=3)
            top = [Path(h.source).name for h in hits]
            found.append({"phrase": phrase, "doc": path.name, "by_eye": by_eye, "top3": path.name in top})
        concurrency = run.settings.worker.parse_concurrency
    return {
        "documents": len(paths),
        "pages": sum(pymupdf.open(p).page_count for p in paths),
        "counts": counts,
        "pure_ocr_wall_s": round(pure, 1),
        "ingest_wall_s": round(ingest, 1),
        "ingest_over_pure_ocr": round(ingest / pure, 2),
        "parse_concurrency": concurrency or "one per core",
        "search_collection_documents": len(paths) + len(eye) + len(others),
        "search_top3": found,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docpipe.bench.ocr", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--pages", type=int, default=200, help="accuracy pages")
    parser.add_argument("--per-file", type=int, default=20, help="accuracy pages per PDF at most (spread evenly)")
    parser.add_argument("--skip-per-file", type=int, default=0, help="accuracy: skip each PDF's first N pages")
    parser.add_argument("--dpi", type=int, default=OcrConfig().dpi)
    parser.add_argument("--skip", nargs="*", default=[], choices=["accuracy", "coverage", "pipeline"])
    parser.add_argument("--coverage-pages", type=int, default=20, help="pages OCR'd per file at most, coverage")
    parser.add_argument("--scan-docs", type=int, default=4)
    parser.add_argument("--scan-pages", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results JSON here too")
    args = parser.parse_args(argv)
    config = OcrConfig(dpi=args.dpi, page_timeout_s=120.0)
    results: dict = {"machine": machine_info(), "ocr": config.model_dump()}
    if "accuracy" not in args.skip:
        results["accuracy"] = measure_accuracy(args.corpus, args.pages, args.per_file, config, args.skip_per_file)
        print(json.dumps(results["accuracy"]), flush=True)
    if "coverage" not in args.skip:
        limits = ParseLimits(timeout_s=600.0)
        capped = config.model_copy(update={"max_pages": args.coverage_pages})
        results["coverage"] = measure_coverage(args.corpus, capped, limits)
        print(json.dumps(results["coverage"]), flush=True)
    if "pipeline" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="docpipe-ocr-bench-") as work:
            scans = (args.scan_docs, args.scan_pages)
            results["pipeline"] = measure_pipeline(args.corpus, Path(work), OcrConfig(), *scans)
        print(json.dumps(results["pipeline"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
