"""What a batch tells its ledger it will read of its users (``expect_reads``): the users whose
events may cancel (their scheduled sends) or meet a cooldown (their last deliveries), which a
SQL ledger then reads at once. ``user_reads`` must name every read the engine makes, or the
ledger reads that user alone; and only those, or it reads rows nothing asks for. Of the rows
read, the copy decodes those of the rules asked for."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import datetime

import pytest

from tests.ledger_helpers import make_send
from tests.test_engine import RULES, T0, cart_event, decide_and_commit, make_event, rules_from
from trigmail.engine import decide, user_reads
from trigmail.events import Event
from trigmail.ingest import expect_batch
from trigmail.ledger.base import CancelMark, LedgerTxn, SendRecord
from trigmail.ledger.memory import MemoryLedger, MemoryTxn
from trigmail.ledger.rows import Row
from trigmail.ledger.sql.users import UserReads
from trigmail.rules.model import RuleSet


class _Spy:
    """A ledger view that notes which of a user's reads the engine made."""

    def __init__(self, txn: LedgerTxn) -> None:
        self._txn = txn
        self.pending = False
        self.delivered = False

    def seen_event(self, event_id: str) -> bool:
        return self._txn.seen_event(event_id)

    def send_exists(self, key: str) -> bool:
        return self._txn.send_exists(key)

    def last_delivered_at(self, rule_id: str, user_id: str) -> datetime | None:
        self.delivered = True
        return self._txn.last_delivered_at(rule_id, user_id)

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        self.pending = True
        return self._txn.pending_for_user(user_id, rule_ids)

    def delivered_count_since(
        self, user_id: str, categories: Collection[str], since: datetime
    ) -> int:
        return self._txn.delivered_count_since(user_id, categories, since)

    def cancel_marks_after(self, user_id: str, order: str) -> list[CancelMark]:
        return self._txn.cancel_marks_after(user_id, order)


@pytest.fixture
def rules() -> RuleSet:
    return rules_from(RULES)


@pytest.fixture
def txn(rules: RuleSet) -> Iterator[LedgerTxn]:
    with MemoryLedger(clock=lambda: T0).transaction() as opened:
        # Something to cancel: a pending reminder and onboarding tips of u1.
        decide_and_commit(opened, rules, cart_event("e0"))
        decide_and_commit(opened, rules, make_event("trial_started", "e00"))
        yield opened


@pytest.mark.parametrize(
    ("event", "pending", "delivered"),
    [
        # cancels the cart reminder (cancel_on)
        (make_event("order_completed"), True, False),
        # cancels it by a matched path
        (make_event("cart_emptied", properties={"cart_id": "c1"}), True, False),
        # cancels a step's tips
        (make_event("account_deleted"), True, False),
        # triggers the cart rule, which has a cooldown
        (cart_event("e2", properties={"cart_id": "c2"}), False, True),
        # triggers rules with neither
        (make_event("user_signup"), False, False),
        (make_event("report_ready", profile={"timezone": "Europe/Lisbon"}), False, False),
        (make_event("coupon_issued", properties={"coupon": "c"}), False, False),
        # triggers nothing
        (make_event("page_viewed"), False, False),
    ],
)
def test_user_reads_names_the_reads_deciding_makes(
    rules: RuleSet, txn: LedgerTxn, event: Event, pending: bool, delivered: bool
) -> None:
    spy = _Spy(txn)
    decide(event, rules, spy, T0)
    assert (spy.pending, spy.delivered) == (pending, delivered)
    assert user_reads(event, rules) == (pending, delivered)


class _Told(MemoryTxn):
    """A memory transaction that keeps what ``expect_reads`` was told."""

    told: tuple[set[str], set[str]] = (set(), set())

    def expect_reads(self, pending: Collection[str], delivered: Collection[str]) -> None:
        self.told = (set(pending), set(delivered))


def test_a_batch_tells_the_users_its_events_read(rules: RuleSet) -> None:
    ledger = MemoryLedger(clock=lambda: T0)
    events = [
        make_event("order_completed", "e1", user="buyer"),
        cart_event("e2", user="shopper"),
        make_event("page_viewed", "e3", user="browser"),
        make_event("user_signup", "e4", user="newcomer"),
        cart_event("e5", user="buyer"),
    ]
    txn = _Told(ledger, lambda: T0)
    with txn:
        expect_batch(txn, rules, events, T0)
    assert txn.told == ({"buyer"}, {"shopper", "buyer"})


def test_the_copy_decodes_a_scheduled_row_once_its_rule_is_asked_for(t0: datetime) -> None:
    decoded: list[str] = []

    def decode(row: Row) -> SendRecord:
        decoded.append(row["key"])
        return make_send(row["key"], t0, user=row["user_id"], rule=row["rule_id"])

    users = UserReads(True, decode)
    rows = [{"key": k, "user_id": "u1", "rule_id": r} for k, r in [("a", "cart"), ("b", "other")]]
    users.read(["u1"], rows, [], [])
    assert decoded == []
    assert [s.key for s in users.pending("u1", {"cart"}) or []] == ["a"]
    assert [s.key for s in users.pending("u1", {"cart"}) or []] == ["a"]
    assert decoded == ["a"]  # once: the other rule's row is still a row
    users.cancelled(["b"])
    assert users.pending("u1", {"cart", "other"}) == [make_send("a", t0)]
    assert decoded == ["a"]
