"""A trigger decided after a cancel that entered the source after it still ends cancelled.

Several workers on one Redis group decide a user's events in whatever order their reads and
crashes allow; what counts is the order the events entered the stream. Real parts: the
pipeline, a MemoryLedger and a SQLite file, the rules loader.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.ledger_helpers import state_of
from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.ingest import RawItem
from trigmail.ledger.base import Ledger, SendState
from trigmail.ledger.memory import MemoryLedger
from trigmail.ledger.sqlite import SqliteLedger
from trigmail.pipeline import Pipeline
from trigmail.providers.recording import RecordingProvider
from trigmail.rules.loader import parse_rules
from trigmail.simulate import VirtualClock

T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
RULES = parse_rules(
    textwrap.dedent(
        """
        rules:
          - id: cart
            on: cart_abandoned
            delay: 1h
            cancel_on: [{event: order_completed, match: properties.cart_id}]
            send: {template: d-cart}
          - id: browse
            on: product_viewed
            delay: 1h
            cancel_on: [order_completed]
            send: {template: d-browse}
        """
    )
).rule_set()


def entry(event_id: str, name: str, order: str, **properties: Any) -> RawItem:
    data = {
        "id": event_id,
        "event": name,
        "user_id": "ana",
        "email": "ana@example.com",
        "ts": "2026-11-27T20:00:00Z",
        "properties": properties,
    }
    # The order text of a Redis entry id: it sorts as the stream does.
    return RawItem(json.dumps(data).encode(), f"stream {order}", order, order=order)


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    if request.param == "memory":
        return MemoryLedger(clock=VirtualClock(T0))
    return SqliteLedger(tmp_path / "ledger.db", clock=VirtualClock(T0))


def pipeline(ledger: Ledger, entries: list[LogEntry]) -> Pipeline:
    return Pipeline(
        ledger, lambda: RULES, RecordingProvider(), VirtualClock(T0), on_entries=entries.extend
    )


def browse_states(ledger: Ledger) -> dict[str, SendState]:
    """The states of the browse reminders of ``v1`` and ``v2``."""
    return {key: state_of(ledger, key) for key in ("browse:v1", "browse:v2")}


# (cart entry's order, order entry's order, order's cart id, the cart reminder's end state)
CASES = [
    # the order entered after the cart but was decided first: the reminder is cancelled
    ("0001", "0002", "c1", SendState.CANCELLED),
    # the order entered first (an earlier purchase): the new cart's reminder stands
    ("0003", "0002", "c1", SendState.SCHEDULED),
    # the later order was for another cart: the reminder stands
    ("0001", "0002", "c2", SendState.SCHEDULED),
]


@pytest.mark.parametrize(("cart_at", "order_at", "cart_id", "state"), CASES)
def test_the_order_the_events_entered_decides_not_the_order_they_were_decided(
    ledger: Ledger, cart_at: str, order_at: str, cart_id: str, state: SendState
) -> None:
    entries: list[LogEntry] = []
    shell = pipeline(ledger, entries)
    shell.ingest([entry("o1", "order_completed", order_at, cart_id=cart_id)])
    shell.ingest([entry("k1", "cart_abandoned", cart_at, cart_id="c1")])
    send = ledger.get_send("cart:k1")
    assert send is not None and send.state is state
    if state is SendState.CANCELLED:
        cancel = [e for e in entries if e.outcome is Outcome.CANCELLED]
        assert [(e.key, e.reason) for e in cancel] == [("cart:k1", Reason.CANCEL_ON)]
        # the key is taken: the trigger delivered again does not schedule it anew
        shell.ingest([entry("k1", "cart_abandoned", cart_at, cart_id="c1")])
        again = ledger.get_send("cart:k1")
        assert again is not None and again.state is SendState.CANCELLED
    ledger.close()


def test_a_cancel_without_match_cancels_every_earlier_trigger_of_the_user(
    ledger: Ledger,
) -> None:
    entries: list[LogEntry] = []
    shell = pipeline(ledger, entries)
    shell.ingest([entry("o1", "order_completed", "0005")])
    shell.ingest([entry("v1", "product_viewed", "0001"), entry("v2", "product_viewed", "0009")])
    assert browse_states(ledger) == {
        "browse:v1": SendState.CANCELLED,
        "browse:v2": SendState.SCHEDULED,
    }
    ledger.close()


def test_one_reader_keeps_no_marks(ledger: Ledger) -> None:
    shell = pipeline(ledger, [])
    item = entry("o1", "order_completed", "0002")
    shell.ingest([RawItem(item.data, item.ref, item.position)])  # a spool line: no order
    with ledger.transaction() as txn:
        assert txn.cancel_marks_after("ana", "") == []
    ledger.close()


def test_a_cancel_decided_late_leaves_alone_the_triggers_that_entered_after_it(
    ledger: Ledger,
) -> None:
    shell = pipeline(ledger, [])
    # Both browses are decided before the order that entered between them.
    shell.ingest([entry("v1", "product_viewed", "0001"), entry("v2", "product_viewed", "0009")])
    shell.ingest([entry("o1", "order_completed", "0005")])
    assert browse_states(ledger) == {
        "browse:v1": SendState.CANCELLED,
        "browse:v2": SendState.SCHEDULED,
    }
    ledger.close()


def timed(event_id: str, name: str, ts_s: float, entered_s: float, seq: int = 0) -> RawItem:
    """A Redis entry that entered the stream ``entered_s`` after T0 (the ``seq``-th entry of
    its millisecond), stamped ``ts_s`` after it."""
    ts = datetime.fromtimestamp(T0.timestamp() + ts_s, UTC)
    entered = datetime.fromtimestamp(T0.timestamp() + entered_s, UTC)
    data = {"id": event_id, "event": name, "user_id": "ana", "email": "ana@example.com",
            "ts": ts.isoformat()}  # fmt: skip
    order = f"{round(entered.timestamp() * 1000):020d}-{seq:020d}"
    return RawItem(json.dumps(data).encode(), f"stream {order}", order, order, entered)


def ingest_in_turn(shell: Pipeline, entries: list[tuple[str, str, float, float, int]]) -> None:
    """Decide each entry (``timed``'s arguments) in a batch of its own, in the order given."""
    for each in entries:
        shell.ingest([timed(*each)])


def test_a_redelivered_cancel_decided_first_counts_where_its_first_copy_entered(
    ledger: Ledger,
) -> None:
    # The producer wrote v1, o1, v2, then o1 again (same event, same ts). The worker holding
    # the first o1 was killed; another decided the copy first. In the order things happened,
    # the order came before v2: it cancels v1 only.
    shell = pipeline(ledger, [])
    shell.ingest([timed("v1", "product_viewed", 1, 1), timed("v2", "product_viewed", 3, 3)])
    shell.ingest([timed("o1", "order_completed", 2, 4)])  # the copy
    shell.ingest([timed("o1", "order_completed", 2, 2)])  # the first copy: a duplicate
    assert browse_states(ledger) == {
        "browse:v1": SendState.CANCELLED,
        "browse:v2": SendState.SCHEDULED,
    }
    ledger.close()


def test_a_redelivered_trigger_decided_first_is_cancelled_by_a_cancel_after_its_first_copy(
    ledger: Ledger,
) -> None:
    shell = pipeline(ledger, [])
    shell.ingest([timed("v1", "product_viewed", 1, 3)])  # the copy, decided first
    shell.ingest([timed("o1", "order_completed", 2, 2)])
    send = ledger.get_send("browse:v1")
    assert send is not None and send.state is SendState.CANCELLED
    ledger.close()


# A producer wrote v1 and then o1 in one write, both stamped with the same ts (one millisecond:
# entries 1 s + 0 and 1 s + 1), and later delivered v1 again (entered at 3 s, the same ts).
# The worker holding the first v1 was killed: the copy is decided first, the first copy last.
FIRST_V1 = ("v1", "product_viewed", 1, 1, 0)
O1 = ("o1", "order_completed", 1, 1, 1)
COPY_V1 = ("v1", "product_viewed", 1, 3, 0)


@pytest.mark.parametrize(
    "decided",
    [
        pytest.param([COPY_V1, O1, FIRST_V1], id="the-cancel-before-the-first-copy"),
        pytest.param([COPY_V1, FIRST_V1, O1], id="the-cancel-after-the-first-copy"),
        pytest.param([FIRST_V1, COPY_V1, O1], id="the-first-copy-first"),
        pytest.param([O1, COPY_V1, FIRST_V1], id="the-cancel-first"),
    ],
)
def test_a_trigger_tied_with_its_cancel_ends_cancelled_whichever_copy_is_decided_first(
    ledger: Ledger, decided: list[tuple[str, str, float, float, int]]
) -> None:
    entries: list[LogEntry] = []
    shell = pipeline(ledger, entries)
    ingest_in_turn(shell, decided)
    send = ledger.get_send("browse:v1")
    assert send is not None and send.state is SendState.CANCELLED
    cancels = [
        (e.key, e.event_id, e.reason, e.detail) for e in entries if e.outcome is Outcome.CANCELLED
    ]
    assert cancels == [("browse:v1", "o1", Reason.CANCEL_ON, "by order_completed")]
    ledger.close()


def test_a_cancel_that_entered_before_the_first_copy_leaves_it_alone(ledger: Ledger) -> None:
    # The same write with o1 first: in the order things happened the browse came second.
    shell = pipeline(ledger, [])
    ingest_in_turn(
        shell, [COPY_V1, ("o1", "order_completed", 1, 1, 0), ("v1", "product_viewed", 1, 1, 1)]
    )
    send = ledger.get_send("browse:v1")
    assert send is not None and send.state is SendState.SCHEDULED
    ledger.close()


def test_a_copy_that_entered_after_the_one_decided_moves_nothing(ledger: Ledger) -> None:
    shell = pipeline(ledger, [])
    shell.ingest([timed("v1", "product_viewed", 1, 1)])
    before = ledger.get_send("browse:v1")
    shell.ingest([timed("v1", "product_viewed", 1, 5)])  # a redelivery, decided after
    # A cancel that entered between the copies, in the order things happened after v1.
    shell.ingest([timed("o1", "order_completed", 2, 2)])
    after = ledger.get_send("browse:v1")
    assert before is not None and after is not None
    assert after.cancel_match == before.cancel_match
    assert after.state is SendState.CANCELLED
    ledger.close()


# A producer wrote o1 and then v2 in one write (one ts, one millisecond), and later delivered
# o1 again (entered at 3 s). The worker holding the first o1 was killed: the copy is decided
# first, the first copy last. In the order things happened, v2 came after the order.
COPY_O1 = ("o1", "order_completed", 1, 3, 0)
FIRST_O1 = ("o1", "order_completed", 1, 1, 0)
V2 = ("v2", "product_viewed", 1, 1, 1)


@pytest.mark.parametrize(
    ("decided", "undone"),
    [
        pytest.param([COPY_O1, V2, FIRST_O1], True, id="cancelled-by-the-copys-mark"),
        pytest.param([V2, COPY_O1, FIRST_O1], True, id="cancelled-by-the-copy"),
        pytest.param([COPY_O1, FIRST_O1, V2], False, id="the-first-copy-before-the-browse"),
        pytest.param([FIRST_O1, COPY_O1, V2], False, id="the-first-copy-first"),
    ],
)
def test_a_redelivered_cancel_tied_with_a_later_browse_leaves_it_alone(
    ledger: Ledger, decided: list[tuple[str, str, float, float, int]], undone: bool
) -> None:
    entries: list[LogEntry] = []
    shell = pipeline(ledger, entries)
    ingest_in_turn(shell, decided)
    send = ledger.get_send("browse:v2")
    assert send is not None and send.state is SendState.SCHEDULED and send.reason is None
    lines = [(e.key, e.outcome, e.reason) for e in entries if e.key == "browse:v2"]
    scheduled = ("browse:v2", Outcome.SCHEDULED, Reason.DELAY)
    if undone:  # cancelled first, then restored when the first copy came
        cancelled = ("browse:v2", Outcome.CANCELLED, Reason.CANCEL_ON)
        restored = ("browse:v2", Outcome.SCHEDULED, Reason.FIRST_COPY)
        assert lines == [scheduled, cancelled, restored]
    else:
        assert lines == [scheduled]
    # The mark stands at the first copy now: a browse of that millisecond decided later, which
    # entered after it, is left alone too.
    shell.ingest([timed("v3", "product_viewed", 1, 1, 2)])
    later = ledger.get_send("browse:v3")
    assert later is not None and later.state is SendState.SCHEDULED
    ledger.close()


def test_a_browse_before_the_first_copy_of_a_redelivered_cancel_stays_cancelled(
    ledger: Ledger,
) -> None:
    shell = pipeline(ledger, [])
    # One write: v1, o1, v2 (one millisecond); o1 again at 3 s, decided before the first o1.
    v1, o1 = ("v1", "product_viewed", 1, 1, 0), ("o1", "order_completed", 1, 1, 1)
    v2 = ("v2", "product_viewed", 1, 1, 2)
    ingest_in_turn(shell, [v1, v2, COPY_O1, o1])
    assert browse_states(ledger) == {
        "browse:v1": SendState.CANCELLED,  # entered before the order: rightly cancelled
        "browse:v2": SendState.SCHEDULED,
    }
    ledger.close()


def test_a_browse_another_cancel_also_cancels_stays_cancelled(ledger: Ledger) -> None:
    shell = pipeline(ledger, [])
    # o2 entered after v2 and cancels it whatever o1 does.
    ingest_in_turn(shell, [COPY_O1, V2, ("o2", "order_completed", 2, 2, 0), FIRST_O1])
    send = ledger.get_send("browse:v2")
    assert send is not None and send.state is SendState.CANCELLED
    ledger.close()
