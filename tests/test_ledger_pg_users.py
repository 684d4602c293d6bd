"""PostgreSQL reads a batch's locked users at once (trigmail/ledger/sql/users.py): what the engine
reads of a locked user must be what one statement per read would return, after this
transaction's own inserts, cancels and claims too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from tests.ledger_helpers import FakeClock, make_send, put_in_state
from trigmail.ledger import PostgresLedger
from trigmail.ledger.base import LedgerTxn, SendState

pytestmark = pytest.mark.postgres


@pytest.fixture
def ledger(postgres_dsn: str, t0: datetime) -> Iterator[PostgresLedger]:
    opened = PostgresLedger(postgres_dsn, clock=FakeClock(t0))
    try:
        yield opened
    finally:
        opened.close()


def _pending(txn: LedgerTxn, user: str) -> list[str]:
    return [send.key for send in txn.pending_for_user(user, {"cart", "other"})]


def test_locked_users_read_at_once_see_the_transactions_own_writes(
    ledger: PostgresLedger, t0: datetime
) -> None:
    put_in_state(ledger, make_send("b", t0 + timedelta(hours=2)), SendState.SCHEDULED, t0)
    put_in_state(ledger, make_send("a", t0 + timedelta(hours=1)), SendState.SCHEDULED, t0)
    put_in_state(ledger, make_send("sent", t0, user="u2"), SendState.SENT, t0)
    with ledger.transaction() as txn:
        txn.lock_users(["u1", "u2", "u3"])
        assert _pending(txn, "u1") == ["a", "b"]  # due_at, then key
        assert _pending(txn, "u3") == []
        assert txn.last_delivered_at("cart", "u2") == t0
        assert txn.last_delivered_at("cart", "u1") is None
        assert not txn.send_exists("c")
        assert txn.insert_send(make_send("c", t0, rule="other"))
        assert _pending(txn, "u1") == ["c", "a", "b"]
        assert txn.cancel_sends(["a"], "order", t0) == ["a"]
        assert _pending(txn, "u1") == ["c", "b"]
        later = t0 + timedelta(minutes=5)
        assert [send.key for send in txn.claim(["c"], later)] == ["c"]
        assert _pending(txn, "u1") == ["b"]
        assert txn.last_delivered_at("other", "u1") == later


def test_a_user_locked_later_is_read_when_first_asked(ledger: PostgresLedger, t0: datetime) -> None:
    put_in_state(ledger, make_send("a", t0, user="u2"), SendState.SCHEDULED, t0)
    with ledger.transaction() as txn:
        txn.lock_users(["u1"])
        assert _pending(txn, "u1") == []
        txn.lock_users(["u2"])
        assert _pending(txn, "u2") == ["a"]
        assert _pending(txn, "u4") == []  # not locked: read alone
