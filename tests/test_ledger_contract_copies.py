"""The ledger contract for what an event's first copy changes when a later copy of it was
decided first (trigmail.copies): a user's cancelled sends read, a cancel undone, the event's
cancel marks moved back. Each ledger, the same answers."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.ledger_helpers import make_send
from trigmail.ledger.base import CancelMark, Ledger, SendState


def test_a_users_cancelled_sends_are_read_by_rule_soonest_first(
    ledger: Ledger, t0: datetime
) -> None:
    with ledger.transaction() as txn:
        for key, hours, rule, user in [
            ("late", 2, "cart", "u1"),
            ("soon", 1, "cart", "u1"),
            ("other-rule", 1, "browse", "u1"),
            ("other-user", 1, "cart", "u2"),
            ("waiting", 1, "cart", "u1"),
        ]:
            assert txn.insert_send(
                make_send(key, t0 + timedelta(hours=hours), rule=rule, user=user)
            )
        cancelled = ["late", "soon", "other-rule", "other-user"]
        assert txn.cancel_sends(cancelled, "cancel_on", t0) == cancelled
        # The same transaction reads its own cancels.
        assert [s.key for s in txn.cancelled_for_user("u1", {"cart"})] == ["soon", "late"]
    with ledger.transaction() as txn:
        found = txn.cancelled_for_user("u1", {"cart", "browse"})
        assert [s.key for s in found] == ["other-rule", "soon", "late"]
        assert {s.state for s in found} == {SendState.CANCELLED}
        assert txn.cancelled_for_user("u3", {"cart"}) == []


def test_restore_undoes_a_cancel_and_nothing_else(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        for key in ("cancelled", "waiting", "claimed"):
            assert txn.insert_send(make_send(key, t0, user=f"u-{key}"))
        assert txn.cancel_sends(["cancelled"], "cancel_on", t0) == ["cancelled"]
        assert [s.key for s in txn.claim(["claimed"], t0)] == ["claimed"]
    later = t0 + timedelta(minutes=5)
    with ledger.transaction() as txn:
        restored = txn.restore("cancelled", later)
        assert restored is not None
        assert (restored.state, restored.reason, restored.updated_at) == (
            SendState.SCHEDULED,
            None,
            later,
        )
        assert txn.restore("waiting", later) is None
        assert txn.restore("claimed", later) is None
        assert txn.restore("absent", later) is None
        assert [s.key for s in txn.pending_for_user("u-cancelled", {"cart"})] == ["cancelled"]
    assert restored == ledger.get_send("cancelled")
    with ledger.transaction() as txn:
        assert [s.key for s in txn.due_sends(t0, 10)] == ["cancelled", "waiting"]


def test_a_moved_mark_stands_where_it_was_moved(ledger: Ledger, t0: datetime) -> None:
    def mark(order: str, event_id: str) -> CancelMark:
        return CancelMark("u1", order, "order_completed", event_id, {"x": 1}, t0)

    with ledger.transaction() as txn:
        txn.add_cancel_mark(mark("0009", "o1"))
        txn.add_cancel_mark(mark("0007", "o2"))
    with ledger.transaction() as txn:
        txn.move_cancel_mark("u1", "o1", "0003")
        txn.move_cancel_mark("u1", "o2", "0008")  # stands before 0008 already: not moved
        txn.move_cancel_mark("u2", "o1", "0001")  # another user's: none
        assert [(m.order, m.event_id) for m in txn.cancel_marks_after("u1", "")] == [
            ("0003", "o1"),
            ("0007", "o2"),
        ]
    with ledger.transaction() as txn:
        marks = txn.cancel_marks_after("u1", "0002")
    assert [(m.order, m.event_id, dict(m.values)) for m in marks] == [
        ("0003", "o1", {"x": 1}),
        ("0007", "o2", {"x": 1}),
    ]


def test_a_moved_mark_goes_back_when_the_transaction_fails(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        txn.add_cancel_mark(CancelMark("u1", "0009", "order_completed", "o1", {}, t0))

    class BoomError(Exception):
        pass

    try:
        with ledger.transaction() as txn:
            txn.move_cancel_mark("u1", "o1", "0003")
            raise BoomError
    except BoomError:
        pass
    with ledger.transaction() as txn:
        assert [m.order for m in txn.cancel_marks_after("u1", "")] == ["0009"]
