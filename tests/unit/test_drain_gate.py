"""DrainGate: one drain at a time, and a wake-up during a drain is never lost."""

from __future__ import annotations

import threading
import time

from docpipe.drain import DrainGate, EmbedStats


def test_wake_up_during_a_drain_makes_it_go_round_again() -> None:
    gate = DrainGate()
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def slow_drain() -> EmbedStats:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            release.wait(5)
        return EmbedStats(chunks=1)

    first: list[list[EmbedStats]] = []
    worker = threading.Thread(target=lambda: first.append(gate.run(slow_drain)))
    worker.start()
    assert entered.wait(5)
    assert gate.run(slow_drain) == []  # handed over, not run twice at once
    release.set()
    worker.join(5)
    assert calls == 2 and len(first[0]) == 2


def test_no_lost_wake_ups_under_contention() -> None:
    gate = DrainGate()
    lock = threading.Lock()
    committed = 0  # "chunks committed", each followed by a wake-up
    drained = 0  # what the last drain saw
    active = 0
    overlap = False

    def drain() -> EmbedStats:
        """Inside for a while (not under the lock), so two drains at once would overlap and be seen."""
        nonlocal drained, active, overlap
        with lock:
            active += 1
            overlap |= active > 1
            drained = committed
        time.sleep(0.0002)  # the window another drain would have to enter
        with lock:
            active -= 1
        return EmbedStats()

    def producer() -> None:
        nonlocal committed
        for _ in range(200):
            with lock:
                committed += 1
            gate.run(drain)

    threads = [threading.Thread(target=producer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert drained == committed == 800
    assert not overlap


def test_the_overlap_check_can_fail_without_the_gate() -> None:
    """The contention test's fake sees two drains at once when nothing serialises them."""
    lock, active, overlap = threading.Lock(), 0, False
    inside = threading.Barrier(2)

    def drain() -> None:
        nonlocal active, overlap
        with lock:
            active += 1
            overlap |= active > 1
        inside.wait(5)  # both threads are inside at once
        with lock:
            active -= 1

    threads = [threading.Thread(target=drain) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert overlap
