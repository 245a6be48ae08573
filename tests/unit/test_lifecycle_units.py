"""Pure parts of the lifecycle: the sync plan, key patterns, states, the progress line."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe import states
from docpipe.client import rate_text
from docpipe.store.lifecycle import glob_to_like, prefix_to_like
from docpipe.sync import plan_sync

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def test_plan_sorts_files_into_actions() -> None:
    stored = {"/s/same": A, "/s/edited": A, "/s/gone": B, "/s/moved": C}
    files = {"/s/same": A, "/s/edited": B, "/s/new": A, "/s/renamed": C}
    plan = plan_sync(files, stored)
    assert plan.unchanged == ["/s/same"]
    assert plan.replace == ["/s/edited"]
    assert plan.rename == [("/s/moved", "/s/renamed")]
    assert plan.delete == ["/s/gone"]
    assert plan.add == ["/s/new"]


def test_plan_of_an_unchanged_folder_is_all_unchanged_and_a_copy_is_an_add() -> None:
    assert plan_sync({"/x": A}, {"/x": A}).unchanged == ["/x"]
    copy = plan_sync({"/x": A, "/y": A}, {"/x": A})  # same bytes at a second path: a second document
    assert copy.add == ["/y"] and copy.rename == []


def test_a_vanished_key_pairs_with_one_new_key_only() -> None:
    plan = plan_sync({"/n1": A, "/n2": A}, {"/old": A})
    assert plan.rename == [("/old", "/n1")] and plan.add == ["/n2"] and plan.delete == []


@given(
    st.dictionaries(st.sampled_from([f"/k{i}" for i in range(8)]), st.sampled_from([A, B, C])),
    st.dictionaries(st.sampled_from([f"/k{i}" for i in range(8)]), st.sampled_from([A, B, C])),
)
def test_plan_accounts_for_every_key_once(files: dict[str, bytes], stored: dict[str, bytes]) -> None:
    plan = plan_sync(files, stored)
    renamed_from = [old for old, _ in plan.rename]
    renamed_to = [new for _, new in plan.rename]
    assert sorted(plan.add + plan.replace + plan.unchanged + renamed_to) == sorted(files)
    assert sorted(plan.delete + renamed_from + plan.replace + plan.unchanged) == sorted(stored)
    assert all(files[new] == stored[old] for old, new in plan.rename)


def like_matches(pattern: str, key: str) -> bool:
    """SQL LIKE with backslash escapes, in Python."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out += re.escape(pattern[i + 1])
            i += 2
            continue
        out += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
        i += 1
    return re.fullmatch(out, key, flags=re.S) is not None


@pytest.mark.parametrize(
    ("glob", "key", "match"),
    [
        ("*.pdf", "/a/b/c.pdf", True),
        ("/a/*/c.pdf", "/a/b/c.pdf", True),
        ("/a/**/c.pdf", "/a/b/x/c.pdf", True),
        ("/a/?.txt", "/a/b.txt", True),
        ("/a/?.txt", "/a/bb.txt", False),
        ("100%_done*", "100%_done.txt", True),
        ("100%_done*", "100x_done.txt", False),  # % and _ are literal in a glob
    ],
)
def test_glob_to_like(glob: str, key: str, match: bool) -> None:
    assert like_matches(glob_to_like(glob), key) is match
    assert fnmatch.fnmatchcase(key, glob.replace("**", "*")) is match


def test_glob_character_classes_are_refused_and_prefixes_are_literal() -> None:
    with pytest.raises(ValueError, match="character classes"):
        glob_to_like("/a/[ab].txt")
    assert like_matches(prefix_to_like("/srv/50%_off/"), "/srv/50%_off/x.pdf")
    assert not like_matches(prefix_to_like("/srv/50%_off/"), "/srv/50x-off/x.pdf")


def test_states_are_strings_with_one_initial_rule() -> None:
    assert states.DocState.READY == "ready" and set(states.FINAL) | set(states.ACTIVE) == set(states.DocState)
    assert states.initial_state(None) is states.DocState.QUEUED
    assert states.initial_state("empty file (0 bytes)") is states.DocState.FAILED


def test_rate_text_shows_pages_per_second_and_eta() -> None:
    import time

    line = rate_text(time.monotonic() - 10.0, finished=5, total=10, pages=50)
    assert line.startswith(("5.0 pages/s", "4.9 pages/s")) and "ETA 0:00:1" in line
    assert "ETA" not in rate_text(time.monotonic() - 1.0, finished=10, total=10, pages=3)
