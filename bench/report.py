"""Print the sections as rich tables and write every figure, the machine and the goals to JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from docpipe.bench.common import Goal, Section


def _goal_cell(goal: Goal) -> str:
    if goal.passed is None:
        return "[yellow]not measured[/]"
    return "[green]pass[/]" if goal.passed else "[red]miss[/]"


def print_report(console: Console, sections: list[Section], machine: dict[str, Any]) -> None:
    flags = " ".join(k for k, v in machine["cpu_flags"].items() if v) or "none"
    console.print(
        f"[bold]machine[/]: {machine['cpu_model']}, {machine['cores_usable']} cores, flags: {flags}; "
        f"torch {machine['versions'].get('torch')}, load {machine['load_avg_1m_at_start']:.1f} at start"
    )
    for section in sections:
        table = Table(title=f"{section.title}\n[dim]baseline: {section.baseline}[/]", title_justify="left")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("unit")
        table.add_column("note", style="dim")
        if section.skipped:
            table.add_row("[yellow]skipped[/]", "", "", section.skipped)
        for f in section.figures:
            table.add_row(f.name, str(f.value), f.unit, f.note)
        console.print(table)
        for note in section.notes:
            console.print(f"  [dim]• {note}[/]")
    goals = [g for s in sections for g in s.goals]
    if goals:
        table = Table(title="Goals", title_justify="left")
        for col in ("goal", "value", "limit", "result", "what limits it"):
            table.add_column(col)
        for g in goals:
            value = "—" if g.value is None else f"{g.value:.3f}"
            table.add_row(g.name, value, f"{g.op} {g.limit}", _goal_cell(g), "" if g.passed else g.limited_by)
        console.print(table)


def write_json(path: Path, *, sections: list[Section], machine: dict[str, Any], options: dict[str, Any]) -> None:
    doc = {
        "machine": machine,
        "options": options,
        "sections": {s.key: asdict(s) for s in sections},
        "goals": [{**asdict(g), "passed": g.passed} for s in sections for g in s.goals],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str))
