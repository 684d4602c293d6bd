"""The bounded heap of sends due soon, refilled from a real MemoryLedger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trigmail.decisions import Payload
from trigmail.ledger.base import SendRecord
from trigmail.ledger.memory import MemoryLedger
from trigmail.rules.model import OnDoubt
from trigmail.scheduler import Scheduler

T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def send(key: str, due_at: datetime) -> SendRecord:
    return SendRecord(
        key=key,
        rule_id="r",
        step=0,
        user_id="u1",
        email="ana@example.com",
        event_id=f"e-{key}",
        due_at=due_at,
        payload=Payload(template="d-x", data={}),
        on_doubt=OnDoubt.SKIP,
        rules_version="v",
    )


def ledger_with(*sends: SendRecord) -> MemoryLedger:
    ledger = MemoryLedger(clock=lambda: T0)
    with ledger.transaction() as txn:
        for record in sends:
            assert txn.insert_send(record)
    return ledger


def refilled(scheduler: Scheduler, ledger: MemoryLedger, now: datetime) -> Scheduler:
    with ledger.transaction() as txn:
        scheduler.refill(txn, now)
    return scheduler


def keys(sends: list[SendRecord]) -> list[str]:
    return [record.key for record in sends]


def fire_all(
    scheduler: Scheduler, ledger: MemoryLedger, now: datetime, per_turn: int
) -> tuple[list[str], int]:
    """Turn as the serve loop does, claiming ``per_turn`` sends a turn, until none is left;
    return the keys in the order they fired and how many times the ledger was read."""
    fired: list[str] = []
    refills = 0
    while True:
        if scheduler.needs_refill(now):
            refilled(scheduler, ledger, now)
            refills += 1
        popped = scheduler.pop_due(now, per_turn)
        if not popped:
            return fired, refills
        with ledger.transaction() as txn:
            txn.claim(keys(popped), now)
        fired += keys(popped)


def test_refill_loads_only_the_horizon() -> None:
    ledger = ledger_with(send("a", T0), send("b", T0 + 5 * MIN), send("c", T0 + 6 * MIN))
    scheduler = refilled(Scheduler(horizon_s=300), ledger, T0)
    assert len(scheduler) == 2
    assert scheduler.loaded_until == T0 + 5 * MIN
    popped = scheduler.pop_due(T0 + 10 * MIN, 10)
    assert keys(popped) == ["a", "b"]
    with ledger.transaction() as txn:
        txn.claim(keys(popped), T0 + 5 * MIN)
    # c was left in the ledger; the horizon ran out, so a refill brings it
    assert scheduler.needs_refill(T0 + 5 * MIN)
    refilled(scheduler, ledger, T0 + 5 * MIN)
    assert keys(scheduler.pop_due(T0 + 6 * MIN, 10)) == ["c"]


@pytest.mark.parametrize(
    ("loaded_until", "now", "expected"),
    [
        # never loaded
        (None, T0, True),
        # the horizon reaches past now
        (T0 + MIN, T0, False),
        # the horizon ends exactly now: run out
        (T0, T0, True),
        # the horizon ended before now
        (T0 - MIN, T0, True),
    ],
)
def test_needs_refill(loaded_until: datetime | None, now: datetime, expected: bool) -> None:
    scheduler = Scheduler(horizon_s=60)
    if loaded_until is not None:
        refilled(scheduler, ledger_with(), loaded_until - MIN)
        assert scheduler.loaded_until == loaded_until
    assert scheduler.needs_refill(now) is expected


def test_max_entries_shrinks_the_horizon() -> None:
    ledger = ledger_with(*(send(f"s{n}", T0 + n * MIN) for n in range(5)))
    scheduler = refilled(Scheduler(horizon_s=3600, max_entries=3), ledger, T0)
    # three fitted, but the horizon stops just before the last loaded instant
    assert keys(scheduler.pop_due(T0 + 10 * MIN, 10)) == ["s0", "s1"]
    assert scheduler.loaded_until == T0 + 2 * MIN - timedelta(microseconds=1)
    assert scheduler.needs_refill(T0 + 2 * MIN)


def test_max_entries_at_one_instant_still_makes_progress() -> None:
    # more sends due at one instant (a window opening) than fit: each refill must load some
    due = T0 + MIN
    ledger = ledger_with(*(send(f"s{n}", due) for n in range(5)))
    fired, _ = fire_all(Scheduler(horizon_s=3600, max_entries=2), ledger, due, per_turn=10)
    assert sorted(fired) == ["s0", "s1", "s2", "s3", "s4"]


@pytest.mark.parametrize(
    ("due_offset", "cached"),
    [
        # inside the loaded horizon: cached
        (MIN, True),
        # exactly at its end: cached
        (5 * MIN, True),
        # past it: left to the ledger
        (5 * MIN + timedelta(microseconds=1), False),
    ],
)
def test_add_inside_and_outside_the_horizon(due_offset: timedelta, cached: bool) -> None:
    scheduler = refilled(Scheduler(horizon_s=300), ledger_with(), T0)
    scheduler.add(send("new", T0 + due_offset))
    assert len(scheduler) == int(cached)


def test_add_before_any_refill_is_ignored() -> None:
    scheduler = Scheduler()
    scheduler.add(send("a", T0))
    assert len(scheduler) == 0
    assert scheduler.next_due_at() is None


def test_add_twice_caches_once() -> None:
    scheduler = refilled(Scheduler(horizon_s=300), ledger_with(send("a", T0)), T0)
    scheduler.add(send("a", T0))
    assert len(scheduler) == 1


def test_add_when_full_shrinks_the_horizon() -> None:
    ledger = ledger_with(send("a", T0), send("b", T0 + MIN))
    scheduler = refilled(Scheduler(horizon_s=300, max_entries=3), ledger, T0)
    assert len(scheduler) == 2
    scheduler.add(send("c", T0 + 2 * MIN))
    scheduler.add(send("d", T0 + 3 * MIN))
    assert len(scheduler) == 3
    # d did not fit: the horizon now ends just before it, so the ledger is read for it once
    # the sends cached before it have fired
    assert scheduler.loaded_until == T0 + 3 * MIN - timedelta(microseconds=1)
    assert not scheduler.needs_refill(T0 + 3 * MIN)
    assert keys(scheduler.pop_due(T0 + 3 * MIN, 10)) == ["a", "b", "c"]
    assert scheduler.needs_refill(T0 + 3 * MIN)


def test_pop_order_is_due_time_then_insertion() -> None:
    scheduler = refilled(Scheduler(horizon_s=3600), ledger_with(), T0)
    for key, due in [("late", T0 + 2 * MIN), ("x", T0 + MIN), ("y", T0 + MIN), ("first", T0)]:
        scheduler.add(send(key, due))
    scheduler.add(send("z", T0 + MIN))
    assert scheduler.next_due_at() == T0
    assert keys(scheduler.pop_due(T0 + MIN, 3)) == ["first", "x", "y"]
    # a limit leaves the rest; a send not yet due stays
    assert keys(scheduler.pop_due(T0 + MIN, 10)) == ["z"]
    assert keys(scheduler.pop_due(T0 + MIN, 10)) == []
    assert scheduler.next_due_at() == T0 + 2 * MIN
    assert keys(scheduler.pop_due(T0 + 2 * MIN, 10)) == ["late"]
    assert scheduler.next_due_at() is None


def test_popped_key_can_be_added_again() -> None:
    # a deferred or retried send comes back under the same key
    scheduler = refilled(Scheduler(horizon_s=3600), ledger_with(send("a", T0)), T0)
    assert keys(scheduler.pop_due(T0, 10)) == ["a"]
    scheduler.add(send("a", T0 + MIN))
    assert keys(scheduler.pop_due(T0 + MIN, 10)) == ["a"]


def test_invalidate_rereads_a_send_scheduled_by_another_process() -> None:
    ledger = ledger_with()
    scheduler = refilled(Scheduler(horizon_s=300), ledger, T0)
    with ledger.transaction() as txn:
        txn.insert_send(send("resolved", T0))  # as `ledger resolve --not-sent` would, elsewhere
    assert not scheduler.needs_refill(T0)
    assert scheduler.pop_due(T0, 10) == []
    scheduler.invalidate()
    assert scheduler.needs_refill(T0)
    assert keys(refilled(scheduler, ledger, T0).pop_due(T0, 10)) == ["resolved"]


def test_sends_due_at_one_instant_pop_in_key_order_however_they_came() -> None:
    # Every worker then takes them (and locks their users) in the same order: two workers
    # taking them in the orders they happened to cache them in deadlocked in PostgreSQL.
    cached_as_added = refilled(Scheduler(horizon_s=300), ledger_with(), T0)
    for key in ("c", "a", "b"):
        cached_as_added.add(send(key, T0))
    loaded = refilled(Scheduler(horizon_s=300), ledger_with(*(send(k, T0) for k in "bca")), T0)
    assert keys(cached_as_added.pop_due(T0, 10)) == ["a", "b", "c"]
    assert keys(loaded.pop_due(T0, 10)) == ["a", "b", "c"]


@pytest.mark.parametrize("count", [0, 1, 2, 50])
def test_due_keys_are_those_pop_due_would_take(count: int) -> None:
    # Due times out of order and some equal: the heap holds them in no sorted order.
    sends = [send(f"k{n}", T0 + MIN * ((n * 7) % 13)) for n in range(count)]
    scheduler = Scheduler(horizon_s=3600)
    with ledger_with(*sends).transaction() as txn:
        scheduler.refill(txn, T0)
    for minutes in (-1, 0, 3, 6, 12, 20):
        until = T0 + MIN * minutes
        expected = {s.key for s in sends if s.due_at <= until}
        assert sorted(scheduler.due_keys(until)) == sorted(expected)
    # Only read: the heap still pops them all, in order.
    popped = scheduler.pop_due(T0 + MIN * 20, count + 1)
    assert [s.key for s in popped] == [
        s.key for s in sorted(sends, key=lambda s: (s.due_at, s.key))
    ]


def test_a_backlog_larger_than_the_heap_is_read_once_per_heap() -> None:
    # Ten sends overdue, three fit (two kept: the last loaded instant may not fit whole). The
    # heap fires before the ledger is read again: once per two sends, not once per turn.
    ledger = ledger_with(*(send(f"s{n}", T0 + n * MIN) for n in range(10)))
    scheduler = Scheduler(horizon_s=60, max_entries=3)
    fired, refills = fire_all(scheduler, ledger, T0 + 20 * MIN, per_turn=1)
    assert fired == [f"s{n}" for n in range(10)]
    # Five heaps of two; the last was not cut, so its horizon reaches past now. Read every
    # turn the horizon had run out, it was nine reads.
    assert refills == 5


def test_a_send_left_to_the_ledger_fires_before_later_cached_ones() -> None:
    # The heap is full; a send due before the last cached ones cannot be cached. The cached
    # sends due after it wait for the refill that loads it.
    ledger = ledger_with(send("a", T0), send("c", T0 + 2 * MIN))
    scheduler = refilled(Scheduler(horizon_s=600, max_entries=3), ledger, T0)
    for late in (send("d", T0 + 3 * MIN), send("b", T0 + MIN)):
        with ledger.transaction() as txn:
            assert txn.insert_send(late)
        scheduler.add(late)
    assert len(scheduler) == 3  # a, c and d: b did not fit
    assert keys(scheduler.pop_due(T0 + 5 * MIN, 10)) == ["a"]
    with ledger.transaction() as txn:
        txn.claim(["a"], T0 + 5 * MIN)
    assert scheduler.needs_refill(T0 + 5 * MIN)
    fired, _ = fire_all(scheduler, ledger, T0 + 5 * MIN, per_turn=10)
    assert fired == ["b", "c", "d"]


def test_one_instant_larger_than_the_heap_fires_in_key_order_with_a_late_comer() -> None:
    # Five sends at one instant, two fit and fire first; a sixth at that instant, whose key
    # comes first, arrives meanwhile: it is not cached, so the cached two wait for a refill
    # that reads it, and every send of the instant fires in key order.
    due = T0 + MIN
    ledger = ledger_with(*(send(f"s{n}", due) for n in range(5)))
    scheduler = refilled(Scheduler(horizon_s=3600, max_entries=2), ledger, due)
    assert not scheduler.needs_refill(due)  # the two cached fire with no read
    with ledger.transaction() as txn:
        assert txn.insert_send(send("a", due))
    scheduler.add(send("a", due))
    assert scheduler.needs_refill(due)
    fired, _ = fire_all(scheduler, ledger, due, per_turn=1)
    assert fired == ["a", "s0", "s1", "s2", "s3", "s4"]
