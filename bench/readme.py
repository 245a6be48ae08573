"""`python -m docpipe.bench.readme RESULTS.json`: the README's Performance tables from one bench run (Markdown)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SECTIONS = (  # (key, figures to show; empty: all)
    ("stack_start", ()),
    ("ingest_first", ("chunks", "tokens (stored counts)", "ingest wall", "pure forward", "ingest ÷ pure forward")),
    ("ingest", ("ingest wall", "pure forward", "ingest ÷ pure forward", "chunks/s", "embed worker: model busy")),
    ("ingest_stages", ()),
    ("langchain", ()),
    ("ingest_text", ("ingest wall", "pure forward", "ingest ÷ pure forward", "LangChain wall ÷ this wall")),
    ("ingest_text_stages", ()),
    ("small_docs", ()),
    ("small_docs_stages", ()),
    ("embedding", ()),
    ("quality", ()),
)


def machine_line(machine: dict) -> str:
    flags = " ".join(f for f, present in machine["cpu_flags"].items() if present) or "none of interest"
    v = machine["versions"]
    return (
        f"{machine['cpu_model']}, {machine['cores_usable']} cores, flags: {flags}; torch {v.get('torch')}, "
        f"onnxruntime {v.get('onnxruntime')}; load average {machine['load_avg_1m_at_start']:.1f} at start, "
        f"{machine.get('load_avg_1m_at_end', 0):.1f} at end; {machine.get('bench_wall_s', 0):.0f} s"
    )


def section_table(section: dict, wanted: tuple[str, ...]) -> list[str]:
    title = f"**{section['title']}** (baseline: {section['baseline']})"
    lines = [title, "", "| figure | value | note |", "|---|---|---|"]
    if section.get("skipped"):
        return [*lines, f"| skipped | | {section['skipped']} |", ""]
    for f in section["figures"]:
        if not wanted or f["name"] in wanted:
            value = f"{f['value']} {f['unit']}".strip()
            lines.append(f"| {f['name']} | {value} | {f['note']} |")
    return [*lines, ""]


def goals_table(goals: list[dict]) -> list[str]:
    lines = ["| goal | value | target | result |", "|---|---|---|---|"]
    for g in goals:
        value = "—" if g["value"] is None else f"{g['value']:.3f}"
        result = {True: "met", False: "missed", None: "not measured"}[g["passed"]]
        lines.append(f"| {g['name']} | {value} | {g['op']} {g['limit']} | {result} |")
    return lines


def render(doc: dict) -> str:
    out = [f"Machine: {machine_line(doc['machine'])}.", ""]
    out += [*goals_table(doc["goals"]), ""]
    for key, wanted in SECTIONS:
        if key in doc["sections"]:
            out += section_table(doc["sections"][key], wanted)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(render(json.loads(Path(args[0]).read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
