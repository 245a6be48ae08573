"""Which documents share a parse task (`docpipe.parse_batches.group_for_parse`)."""

from __future__ import annotations

from docpipe.config import ParseLimits
from docpipe.parse_batches import SPREAD, group_for_parse

LIMITS = ParseLimits(batch_documents=4, batch_max_bytes=1000)


def test_small_documents_share_tasks_in_input_order() -> None:
    docs = [(i, 500, "text/plain") for i in range(40)]
    tasks = group_for_parse(docs, LIMITS)
    assert [d for task in tasks for d in task] == list(range(40))
    assert {len(task) for task in tasks} == {4}


def test_large_documents_and_images_get_a_task_each_and_go_first() -> None:
    docs = [(1, 500, "text/plain"), (2, 5000, "application/pdf"), (3, 200, "image/png"), (4, 900, "text/html")]
    assert group_for_parse(docs, LIMITS) == [[2], [3], [1], [4]]


def test_a_small_ingest_still_fans_out() -> None:
    docs = [(i, 100, "text/markdown") for i in range(2 * SPREAD)]
    tasks = group_for_parse(docs, ParseLimits(batch_documents=32))
    assert len(tasks) == SPREAD and all(len(task) == 2 for task in tasks)
    assert group_for_parse(docs[:3], ParseLimits(batch_documents=32)) == [[0], [1], [2]]


def test_batch_documents_1_is_one_task_per_document() -> None:
    docs = [(i, 100, "text/plain") for i in range(50)]
    assert group_for_parse(docs, ParseLimits(batch_documents=1)) == [[i] for i in range(50)]
