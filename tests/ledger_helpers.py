"""Ledger fixtures and builders shared by the ledger contract suite and the tests that need a
send in a given state. A pytest plugin (tests/conftest.py): the ``ledger`` fixture, parametrised
over every implementation, and its ``clock`` reach every test module without an import."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from trigmail.decisions import Payload
from trigmail.ledger import MemoryLedger, PostgresLedger, SqliteLedger
from trigmail.ledger.base import Ledger, SendRecord, SendState
from trigmail.rules.model import Address, OnDoubt


@dataclass
class FakeClock:
    """The time the ledger stamps writes that carry none; tests move it by hand."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(t0: datetime) -> FakeClock:
    return FakeClock(t0)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    opened: Ledger
    if request.param == "memory":
        opened = MemoryLedger(clock=clock)
    elif request.param == "sqlite":
        opened = SqliteLedger(tmp_path / "ledger.db", clock=clock)
    else:
        # Requested only here, so memory and SQLite runs need no server.
        dsn = request.getfixturevalue("postgres_dsn")
        opened = PostgresLedger(dsn, clock=clock)
    try:
        yield opened
    finally:
        opened.close()


def make_send(
    key: str,
    due_at: datetime,
    *,
    rule: str = "cart",
    user: str = "u1",
    categories: tuple[str, ...] = ("promo",),
    on_doubt: OnDoubt = OnDoubt.SKIP,
) -> SendRecord:
    payload = Payload(
        template="d-123",
        data={"cart_url": "https://shop.example/c/9", "value": 82.5, "items": [1, 2]},
        categories=categories,
        asm_group=1234,
        from_=Address("hello@example.com", "Shop"),
    )
    return SendRecord(
        key=key,
        rule_id=rule,
        step=0,
        user_id=user,
        email=f"{user}@example.com",
        event_id=f"evt-{key}",
        due_at=due_at,
        payload=payload,
        on_doubt=on_doubt,
        rules_version="v1",
        cancel_match={"properties.cart_id": "c9"},
    )


def insert(ledger: Ledger, *sends: SendRecord) -> None:
    with ledger.transaction() as txn:
        for send in sends:
            assert txn.insert_send(send)


def state_of(ledger: Ledger, key: str) -> SendState:
    record = ledger.get_send(key)
    assert record is not None
    return record.state


def put_in_state(ledger: Ledger, send: SendRecord, state: SendState, at: datetime) -> None:
    """Insert ``send`` and walk it through the state machine to ``state``."""
    insert(ledger, send)
    with ledger.transaction() as txn:
        if state == SendState.CANCELLED:
            assert txn.drop(send.key, "test", at)
        elif state != SendState.SCHEDULED:
            assert txn.claim([send.key], at)
            if state != SendState.SENDING:
                txn.finish([send.key], state, at)
    assert state_of(ledger, send.key) == state


def write_old_categories(path: Path) -> None:
    """Fill ``send_categories`` of a SQLite ledger below schema v9 as its trigmail did, one row
    per (send, distinct category of its payload): this trigmail writes no such rows."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "INSERT INTO send_categories (key, category) SELECT DISTINCT s.key, p.value"
            " FROM sends AS s, json_each(s.payload, '$.categories') AS p"
        )
