"""Terminal output of the CLI: file names, sources and snippets cannot inject markup or escapes."""

from __future__ import annotations

import pytest

from docpipe.cli import print_hits, safe
from docpipe.search import Hit


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("[/nope] closing tag", "[/nope] closing tag"),
        ("[bold red]loud[/]", "[bold red]loud[/]"),
        ("\x1b]0;pwned\x07title", "\ufffd]0;pwned\ufffdtitle"),  # OSC: would retitle the terminal
        ("\x1b[2J\x1b[Hclear", "\ufffd[2J\ufffd[Hclear"),  # CSI: would clear it
        ("a\u202egnp.exe", "a\ufffdgnp.exe"),  # a bidi override disguising a name
    ],
)
def test_safe_shows_text_literally(raw: str, shown: str, capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    Console(force_terminal=False, width=200).print(safe(raw), highlight=False)
    assert capsys.readouterr().out.rstrip("\n") == shown


def test_search_hits_with_markup_and_escapes_print(capsys: pytest.CaptureFixture[str]) -> None:
    hit = Hit(
        chunk_id=1, document_id=1, text="see [/nope] and [link=x]y[/link] \x1b[2J", source="/d/\x1b]0;t\x07[b].md",
        page_start=1, page_end=1, score=0.5,
    )  # fmt: skip
    print_hits([hit])
    out = capsys.readouterr().out
    assert "[/nope]" in out and "[link=x]y[/link]" in out and "[b].md" in out
    assert "\x1b" not in out and "\x07" not in out
