"""Schema v11: ``sends_by_state_rule`` holds the sends other than scheduled alone; the reads of
such sends still use it (they name its predicate), and a v10 file migrates with its data."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.ledger_helpers import make_send
from tests.test_ledger_sqlite_schema import SQL, _dump, fill_sends, index_sql, plan, query_rows
from trigmail.evidence import EvidenceState
from trigmail.ledger import SqliteLedger, migrations
from trigmail.ledger.base import SendState
from trigmail.ledger.sql.evidence import statements
from trigmail.ledger.sqlite import SqliteTxn
from trigmail.rules.model import OnDoubt

ESQL = statements(SqliteTxn.dialect)

# The reads of sends in one state other than scheduled: recovery, status, the evidence reads.
READERS = {
    "sending": SQL.sending,
    "latest_in": SQL.latest_in,
    "in_doubt_evidenced": ESQL.in_doubt_evidenced,
    "in_doubt_evidenced_of": ESQL.in_doubt_evidenced_of,
    "unverified": ESQL.unverified,
    "doubt_states": ESQL.doubt_states,
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def written(db_path: Path, t0: datetime) -> Iterator[sqlite3.Connection]:
    """A ledger as the daemon leaves it, without ANALYZE's stats (with them, the ordered evidence
    read walks the keys instead, as it did on v10)."""
    fill_sends(db_path, t0)
    with closing(sqlite3.connect(db_path)) as conn:
        yield conn


@pytest.mark.parametrize("name", READERS)
def test_the_reads_of_sends_in_a_state_other_than_scheduled_search_the_partial_index(
    written: sqlite3.Connection, name: str
) -> None:
    steps = plan(written, READERS[name])
    assert steps[0] == "SEARCH sends USING INDEX sends_by_state_rule (state=?)", steps


def test_pruning_finds_the_old_sends_by_their_update_time(written: sqlite3.Connection) -> None:
    # the old rows alone, not every sent send of the state index
    assert plan(written, SQL.prune[0]) == [
        "SEARCH sends USING INDEX sends_by_updated (updated_at<?)"
    ]


def test_status_counts_the_other_states_from_the_index_and_the_scheduled_by_a_scan(
    written: sqlite3.Connection,
) -> None:
    steps = plan(written, SQL.counts)
    assert "SCAN sends USING COVERING INDEX sends_by_state_rule" in steps, steps
    assert "SCAN sends" in steps, steps  # in rowid order, not row by row through an index
    rows = written.execute(SQL.counts).fetchall()
    assert sorted(rows) == [("cart", "scheduled", 100), ("cart", "sent", 200)]


def _indexed(path: Path) -> list[tuple[str, str]]:
    """The (state, key) rows of ``sends_by_state_rule``."""
    return query_rows(
        path,
        "SELECT state, key FROM sends INDEXED BY sends_by_state_rule"
        f" WHERE {migrations.UNSCHEDULED} ORDER BY state, key",
    )


def test_a_send_enters_the_state_index_when_claimed_and_leaves_it_when_retried(
    db_path: Path, t0: datetime
) -> None:
    with closing(SqliteLedger(db_path)) as ledger:
        with ledger.transaction() as txn:
            for key in ("k1", "k2", "k3"):
                txn.insert_send(make_send(key, t0))
        assert _indexed(db_path) == []
        with ledger.transaction() as txn:
            txn.claim(["k1", "k2"], t0)
        assert _indexed(db_path) == [("sending", "k1"), ("sending", "k2")]
        with ledger.transaction() as txn:
            txn.finish(["k1"], SendState.SENT, t0, message_id="m")
            txn.retry_later(["k2"], t0 + timedelta(hours=1), "busy")
            txn.drop("k3", "gone", t0)
        assert _indexed(db_path) == [("cancelled", "k3"), ("sent", "k1")]
        assert ledger.status(limit=5).counts[SendState.SCHEDULED] == 1


# -- migration v10 -> v11 ----------------------------------------------------------------------

# The fixture's sends by state: k0-k3 scheduled, k4-k5 sending, k6 sent, k7 failed, k8 in doubt
# (verify), k9 cancelled.
STATES = {
    SendState.SCHEDULED: 4,
    SendState.SENDING: 2,
    SendState.SENT: 1,
    SendState.FAILED: 1,
    SendState.IN_DOUBT: 1,
    SendState.CANCELLED: 1,
}


def _v10_ledger(path: Path, t0: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:10])
        patched.setattr(migrations, "LATEST_VERSION", 10)
        with closing(SqliteLedger(path)) as ledger, ledger.transaction() as txn:
            for n in range(10):
                on_doubt = OnDoubt.VERIFY if n == 8 else OnDoubt.SKIP
                txn.insert_send(make_send(f"k{n}", t0, rule=f"r{n % 2}", on_doubt=on_doubt))
            txn.claim([f"k{n}" for n in range(4, 9)], t0)
            txn.finish(["k6"], SendState.SENT, t0, message_id="m")
            txn.finish(["k7"], SendState.FAILED, t0)
            txn.finish(["k8"], SendState.IN_DOUBT, t0)
            txn.drop("k9", "gone", t0)


def test_migrating_a_v10_file_makes_the_state_index_partial_and_keeps_the_data(
    db_path: Path, t0: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _v10_ledger(db_path, t0, monkeypatch)
    assert index_sql(db_path, "sends_by_state_rule")[0] == 0
    before = _dump(db_path, ("sends",))
    SqliteLedger(db_path).close()
    assert _dump(db_path, ("sends",)) == before
    assert query_rows(db_path, "SELECT value FROM meta WHERE name = 'schema_version'") == [("11",)]
    partial, sql = index_sql(db_path, "sends_by_state_rule")
    assert (partial, sql.endswith("WHERE state <> 'scheduled'")) == (1, True)
    # the scheduled sends are out of the index, every other one in it
    assert [key for _, key in _indexed(db_path)] == [f"k{n}" for n in (9, 7, 8, 4, 5, 6)]
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        for name, text in READERS.items():
            assert plan(conn, text)[0] == (
                "SEARCH sends USING INDEX sends_by_state_rule (state=?)"
            ), name
    with closing(SqliteLedger(db_path)) as ledger:
        status = ledger.status(limit=5)
        assert status.counts == STATES
        assert status.by_rule["r0"][SendState.SCHEDULED] == 2
        assert [r.key for r in status.in_doubt] == ["k8"]
        assert [r.key for r in status.failed] == ["k7"]
        assert ledger.in_doubt_by_evidence()[EvidenceState.AWAITING_VERIFY] == 1
        with ledger.transaction() as txn:
            recovered = txn.recover_in_flight(t0 + timedelta(minutes=1))
    assert sorted(r.key for r in recovered) == ["k4", "k5"]


@pytest.mark.parametrize("state", list(SendState))
def test_a_gauge_counts_one_state_from_an_index_never_by_reading_every_send(
    written: sqlite3.Connection, state: SendState
) -> None:
    # From the index alone: the partial index of the scheduled sends holds them alone, the
    # state index holds each send's state. 1,000,000 sends: 0.04 s; status reads 0.9 s.
    expected_plan = (
        "SCAN sends USING INDEX sends_scheduled_by_due"
        if state is SendState.SCHEDULED
        else "SEARCH sends USING COVERING INDEX sends_by_state_rule (state=?)"
    )
    assert plan(written, SQL.count_in[state]) == [expected_plan]
    expected = {SendState.SCHEDULED: 100, SendState.SENT: 200}.get(state, 0)
    assert written.execute(SQL.count_in[state]).fetchone() == (expected,)
