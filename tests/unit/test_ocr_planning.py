"""Page-range planning: every parse request stays within its OCR budget, and every page is planned once."""

from __future__ import annotations

from pathlib import Path

import pytest

from docpipe.config import OcrConfig, ParseLimits, Settings
from docpipe.processing import _rest_of, _rest_of_part, plan_ranges
from docpipe.types import ParsedDocument


def settings(parse_split: int = 8, ocr_split: int = 2) -> Settings:
    return Settings(
        data_dir=Path("/tmp/unused"), parse=ParseLimits(split_pages=parse_split), ocr=OcrConfig(split_pages=ocr_split)
    )


def covered(ranges: list[tuple[int, int]]) -> list[int]:
    return [page for start, end in ranges for page in range(start, end + 1)]


def test_text_pages_go_in_ranges_of_max_pages() -> None:
    assert plan_ranges(5, 20, [], max_pages=8, max_ocr=2) == [(5, 12), (13, 20)]


def test_a_range_ends_before_the_page_past_its_ocr_budget() -> None:
    assert plan_ranges(1, 10, [2, 3, 4, 9], max_pages=8, max_ocr=2) == [(1, 3), (4, 10)]


def test_scans_go_in_ranges_of_the_ocr_budget() -> None:
    assert plan_ranges(3, 9, range(3, 10), max_pages=64, max_ocr=2) == [(3, 4), (5, 6), (7, 8), (9, 9)]


def test_no_page_limit_and_an_empty_range() -> None:
    assert plan_ranges(1, 100, [50], max_pages=0, max_ocr=1) == [(1, 100)]
    assert plan_ranges(7, 6, [], max_pages=4, max_ocr=1) == []


@pytest.mark.parametrize("max_pages", [1, 3, 8])
@pytest.mark.parametrize("max_ocr", [1, 2, 5])
def test_every_page_once_and_every_range_within_both_limits(max_pages: int, max_ocr: int) -> None:
    ocr = {3, 4, 5, 11, 12, 20, 21, 22, 23, 24, 30}
    ranges = plan_ranges(2, 31, sorted(ocr), max_pages=max_pages, max_ocr=max_ocr)
    assert covered(ranges) == list(range(2, 32))
    for start, end in ranges:
        assert end - start + 1 <= max_pages
        assert len(ocr & set(range(start, end + 1))) <= max_ocr


def test_first_request_of_a_text_pdf_hands_out_the_rest_in_text_ranges() -> None:
    parsed = ParsedDocument([], page_count=20)
    assert _rest_of(parsed, settings(), 8, budget=2) == [(9, 16), (17, 20)]


def test_first_request_of_a_scan_plans_its_range_then_scan_ranges() -> None:
    parsed = ParsedDocument([], page_count=12, parsed_to=2, ocr_pending=[3, 4, 5, 6, 7, 8])
    assert _rest_of(parsed, settings(), 8, budget=2) == [(3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]


def test_scanned_cover_pages_do_not_make_the_rest_a_scan() -> None:
    parsed = ParsedDocument([], page_count=30, parsed_to=2, ocr_pending=[3])  # 3 of 8 pages want OCR
    assert _rest_of(parsed, settings(), 8, budget=2) == [(3, 8), (9, 16), (17, 24), (25, 30)]


def test_image_frames_fan_out_in_ocr_ranges() -> None:
    parsed = ParsedDocument([], page_count=5, parsed_to=2)  # the first request read frames 1-2 of 5
    assert _rest_of(parsed, settings(), 2, budget=2) == [(3, 4), (5, 5)]


def test_a_part_stopped_by_its_budget_leaves_the_rest_of_its_range() -> None:
    parsed = ParsedDocument([], page_count=40, parsed_to=11, ocr_pending=[12, 13, 30])
    assert _rest_of_part(parsed, 32, settings(parse_split=8, ocr_split=2)) == [(12, 19), (20, 27), (28, 32)]
    assert _rest_of_part(parsed, 32, settings(parse_split=64, ocr_split=1)) == [(12, 12), (13, 29), (30, 32)]


def test_a_part_read_to_its_end_leaves_nothing() -> None:
    assert _rest_of_part(ParsedDocument([], page_count=40), 32, settings()) == []
    assert _rest_of_part(ParsedDocument([], page_count=9, parsed_to=6), 6, settings()) == []  # image frames
