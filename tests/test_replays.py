"""Replay allowances and pauses in the ledger's meta, on every backend (memory, SQLite,
PostgreSQL): what `dead-letters replay` and `pause` write and the daemon reads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from trigmail.ledger import Ledger, open_ledger
from trigmail.pauses import Pause, read_pauses, write_pauses
from trigmail.replays import allow_replay, take_replay

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "memory":
        target = ":memory:"
    elif request.param == "sqlite":
        target = str(tmp_path / "ledger.db")
    else:
        target = request.getfixturevalue("postgres_dsn")
    opened = open_ledger(target)
    try:
        yield opened
    finally:
        opened.close()


def test_an_allowance_is_taken_once(ledger: Ledger) -> None:
    with ledger.transaction() as txn:
        assert not take_replay(txn, "e1")  # none given
        allow_replay(txn, "e1", "abc123", NOW)
    with ledger.transaction() as txn:
        assert take_replay(txn, "e1")
        assert not take_replay(txn, "e2")
    with ledger.transaction() as txn:
        assert not take_replay(txn, "e1")  # used up


def test_an_allowance_taken_in_a_rolled_back_transaction_stays(ledger: Ledger) -> None:
    with ledger.transaction() as txn:
        allow_replay(txn, "e1", "abc123", NOW)
    with pytest.raises(RuntimeError), ledger.transaction() as txn:
        assert take_replay(txn, "e1")
        raise RuntimeError("the batch failed")
    with ledger.transaction() as txn:
        assert take_replay(txn, "e1")


def test_pauses_are_read_modified_and_written_in_one_transaction(ledger: Ledger) -> None:
    with ledger.transaction() as txn:
        assert read_pauses(txn) == {}
        write_pauses(txn, {"cart": Pause("cart", NOW, reason="broken")})
    with ledger.transaction() as txn:
        pauses = read_pauses(txn)
        pauses["welcome"] = Pause("welcome", NOW, drop=True)
        write_pauses(txn, pauses)
    with ledger.transaction() as txn:
        assert sorted(read_pauses(txn)) == ["cart", "welcome"]
