"""The SQLite ledger's indexes: the plans its statements get, pruning without time indexes, the
migrations to v7, v8, v9 and v10."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.ledger_helpers import make_send, write_old_categories
from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.errors import LedgerError
from trigmail.ledger import SqliteLedger, migrations
from trigmail.ledger.base import SendState
from trigmail.ledger.sqlite import SqliteTxn

SQL = SqliteTxn.sql

# What the serve loop runs for every event it decides (the due reads run once a turn).
PER_EVENT = (
    "seen_event",
    "send_exists",
    "sends_among",
    "last_delivered",
    "pending_for_user",
    "delivered_count",
    "cancel_marks_after",
    "cancel_sends",
    "get_position",
    "claim",
    "sends_of",
    "write_claims",
    "finish",
)
BIG_TABLES = ("sends", "seen_events", "decision_log")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


def fill_sends(db_path: Path, t0: datetime) -> None:
    """300 sends of 30 users, the first 200 sent, the rest scheduled, as the daemon leaves them."""
    with closing(SqliteLedger(db_path)) as ledger, ledger.transaction() as txn:
        for n in range(300):
            txn.insert_send(make_send(f"k{n}", t0 + timedelta(minutes=n), user=f"u{n % 30}"))
        txn.claim([f"k{n}" for n in range(200)], t0)
        txn.finish([f"k{n}" for n in range(200)], SendState.SENT, t0, message_id="m")


@pytest.fixture(params=[False, True], ids=["as-written", "analysed"])
def filled(
    db_path: Path, t0: datetime, request: pytest.FixtureRequest
) -> Iterator[sqlite3.Connection]:
    """:func:`fill_sends`, with and without ANALYZE's stats (the daemon never runs it; an
    operator may)."""
    fill_sends(db_path, t0)
    with closing(sqlite3.connect(db_path)) as conn:
        if request.param:
            conn.execute("ANALYZE")
        yield conn


def plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", [None] * sql.count("?")).fetchall()
    return [row[3] for row in rows]


def index_names(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {name for (name,) in rows}


# -- query plans -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["due_sends", "next_due", "next_due_at"])
def test_the_due_reads_walk_the_scheduled_sends_index_with_no_sort(
    filled: sqlite3.Connection, name: str
) -> None:
    steps = plan(filled, getattr(SQL, name))
    assert any("USING INDEX sends_scheduled_by_due" in step for step in steps), steps
    assert not any("TEMP B-TREE" in step for step in steps), steps


@pytest.mark.parametrize("name", PER_EVENT)
def test_no_per_event_statement_scans_a_big_table(filled: sqlite3.Connection, name: str) -> None:
    steps = plan(filled, getattr(SQL, name))
    scans = [s for s in steps if s.startswith("SCAN") and s.split()[1] in BIG_TABLES]
    assert scans == [], steps


def test_the_dropped_indexes_are_gone_and_the_partial_one_is_there(db_path: Path) -> None:
    SqliteLedger(db_path).close()
    names = index_names(db_path)
    assert "sends_scheduled_by_due" in names
    with closing(sqlite3.connect(db_path)) as conn:
        partial = {row[1]: row[4] for row in conn.execute("PRAGMA index_list(sends)")}
    assert partial["sends_scheduled_by_due"] == 1
    dropped = {"sends_by_state_due", "send_categories_by_category", "decision_log_by_event"}
    assert not (dropped | {"seen_events_by_seen_at", "decision_log_by_at"}) & names


# -- pruning in rowid order --------------------------------------------------------------------


def _entry(at: datetime, n: int) -> LogEntry:
    return LogEntry(at, f"e{n}", "u1", "cart", 0, None, Outcome.SCHEDULED, Reason.IMMEDIATE)


def _append(ledger: SqliteLedger, ages_s: list[int], now: datetime) -> None:
    """Write a seen id and a log line per age, in list order (the order of their rowids)."""
    with ledger.transaction() as txn:
        for n, age_s in enumerate(ages_s):
            at = now - timedelta(seconds=age_s)
            txn.mark_seen(f"e{n}", at)
            txn.log([_entry(at, n)])


def _left(path: Path) -> tuple[list[str], list[str]]:
    with closing(sqlite3.connect(path)) as conn:
        seen = conn.execute("SELECT event_id FROM seen_events ORDER BY rowid").fetchall()
        log = conn.execute("SELECT event_id FROM decision_log ORDER BY id").fetchall()
    return [e for (e,) in seen], [e for (e,) in log]


# Ages in seconds, written in this order; the retention is 100 s. What remains, of each table.
PRUNE_CASES = [
    # in time order: the old ones go, the rest stay
    ([300, 200, 150, 50, 10], ["e3", "e4"]),
    # a clock set back: e3 is old but written after e2, inside retention; it stays (longer)
    ([300, 200, 50, 500, 10], ["e2", "e3", "e4"]),
    # a row inside retention before old ones: nothing after it goes
    ([300, 20, 400, 500], ["e1", "e2", "e3"]),
    # all old: all go
    ([300, 200, 150], []),
    # none old: none go
    ([50, 40, 99], ["e0", "e1", "e2"]),
    # exactly at the cutoff is inside retention
    ([300, 100, 400], ["e1", "e2"]),
]


@pytest.mark.parametrize(("ages_s", "kept"), PRUNE_CASES)
def test_pruning_deletes_up_to_the_first_row_inside_retention(
    db_path: Path, t0: datetime, ages_s: list[int], kept: list[str]
) -> None:
    with closing(SqliteLedger(db_path)) as ledger:
        _append(ledger, ages_s, t0)
        removed = ledger.prune(t0 - timedelta(seconds=100))
    assert _left(db_path) == (kept, kept)
    assert removed == 2 * (len(ages_s) - len(kept))


def test_pruning_never_deletes_a_row_inside_retention(db_path: Path, t0: datetime) -> None:
    ages_s = [(n * 37) % 250 for n in range(200)]  # shuffled ages, old and young mixed
    with closing(SqliteLedger(db_path)) as ledger:
        _append(ledger, ages_s, t0)
        ledger.prune(t0 - timedelta(seconds=100))
    young = [f"e{n}" for n, age_s in enumerate(ages_s) if age_s <= 100]
    seen, log = _left(db_path)
    assert set(young) <= set(seen)
    assert set(young) <= set(log)


# -- migrations v6 -> v7 -> v8 -----------------------------------------------------------------


def _old_ledger(path: Path, t0: datetime, monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """Write a ledger at schema ``version`` holding sends (5 sent, 15 scheduled), categories,
    seen ids and a log."""
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:version])
        patched.setattr(migrations, "LATEST_VERSION", version)
        with closing(SqliteLedger(path)) as ledger:
            with ledger.transaction() as txn:
                for n in range(20):
                    send = make_send(
                        f"k{n}", t0 + timedelta(hours=n), categories=("p", f"c{n % 3}")
                    )
                    txn.insert_send(send)
                txn.claim([f"k{n}" for n in range(5)], t0)
                txn.finish([f"k{n}" for n in range(5)], SendState.SENT, t0, message_id="m")
            _append(ledger, [300, 200, 10], t0)
    if version < 9:
        write_old_categories(path)


def _dump(
    path: Path, tables: tuple[str, ...] = ("sends", "seen_events", "decision_log")
) -> dict[str, list[Any]]:
    with closing(sqlite3.connect(path)) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}


def test_migrating_a_v6_file_keeps_its_data_and_passes_the_checks(
    db_path: Path, t0: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_ledger(db_path, t0, monkeypatch, 6)
    assert "sends_by_state_due" in index_names(db_path)
    assert len(_categories(db_path)) == 40
    before = _dump(db_path)
    with closing(SqliteLedger(db_path)) as ledger:
        assert ledger.get_meta("schema_version") == str(migrations.LATEST_VERSION)
        with ledger.transaction() as txn:
            assert [s.key for s in txn.due_sends(t0 + timedelta(hours=7), 10)] == [
                f"k{n}" for n in range(5, 8)
            ]
    assert _dump(db_path) == before
    assert len(_categories(db_path)) == 0 < len(before["sends"])
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    names = index_names(db_path)
    assert "sends_scheduled_by_due" in names
    assert "sends_by_state_due" not in names
    assert "seen_events_by_seen_at" not in names


def index_sql(path: Path, name: str) -> tuple[int, str]:
    """Whether the index ``name`` of sends is partial, and its SQL."""
    with closing(sqlite3.connect(path)) as conn:
        partial = {row[1]: row[4] for row in conn.execute("PRAGMA index_list(sends)")}
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return partial[name], sql


def _indexed_claims(path: Path) -> list[tuple[str, int]]:
    """The (user, claim time) rows read through ``sends_by_rule_user_claimed``."""
    return query_rows(
        path,
        "SELECT user_id, claimed_at FROM sends INDEXED BY sends_by_rule_user_claimed"
        " WHERE rule_id = 'cart' AND claimed_at IS NOT NULL ORDER BY user_id",
    )


def query_rows(path: Path, sql: str) -> list[Any]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def test_migrating_a_v7_file_makes_the_claims_index_partial_and_keeps_the_data(
    db_path: Path, t0: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_ledger(db_path, t0, monkeypatch, 7)
    assert index_sql(db_path, "sends_by_rule_user_claimed")[0] == 0
    before = _dump(db_path)
    with closing(SqliteLedger(db_path)) as ledger:
        assert ledger.get_meta("schema_version") == str(migrations.LATEST_VERSION)
        with ledger.transaction() as txn:
            assert txn.last_delivered_at("cart", "u1") == t0
            assert txn.last_delivered_at("cart", "u2") is None
    assert _dump(db_path) == before
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    partial, sql = index_sql(db_path, "sends_by_rule_user_claimed")
    assert partial == 1
    assert sql.endswith("WHERE claimed_at IS NOT NULL")
    # the 5 sent sends are in it, the 15 scheduled ones are not
    assert _indexed_claims(db_path) == [("u1", _us(t0))] * 5


def test_a_send_enters_the_claims_index_when_claimed_and_leaves_it_when_retried(
    db_path: Path, t0: datetime
) -> None:
    with closing(SqliteLedger(db_path)) as ledger:
        with ledger.transaction() as txn:
            txn.insert_send(make_send("k1", t0, user="u1"))
            txn.insert_send(make_send("k2", t0, user="u2"))
        assert _indexed_claims(db_path) == []
        with ledger.transaction() as txn:
            txn.claim(["k1", "k2"], t0)
        assert _indexed_claims(db_path) == [("u1", _us(t0)), ("u2", _us(t0))]
        with ledger.transaction() as txn:
            txn.retry_later(["k2"], t0 + timedelta(hours=1), "busy")
            assert txn.last_delivered_at("cart", "u2") is None
        assert _indexed_claims(db_path) == [("u1", _us(t0))]


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=moment.tzinfo)) // timedelta(microseconds=1)


# -- migration v8 -> v9: the categories read from the payloads -----------------------------------


def _categories(path: Path) -> list[tuple[str, str]]:
    """The rows of ``send_categories``; none once the table is gone."""
    with closing(sqlite3.connect(path)) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'send_categories'").fetchone():
            return conn.execute(
                "SELECT key, category FROM send_categories ORDER BY 1, 2"
            ).fetchall()
    return []


# The categories a cap counts; the fixture's sent sends k0..k4 list "p" and c0, c1, c2, c0, c1.
CAP_CATEGORIES = [["p"], ["c0"], ["c1", "c2"], ["c2", "p"], ["zz"], []]
SENT = {f"k{n}" for n in range(5)}


def test_migrating_a_v8_file_drops_the_category_table_and_caps_count_the_same(
    db_path: Path, t0: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_ledger(db_path, t0, monkeypatch, 8)
    rows = _categories(db_path)
    # what v8 counted: the sent sends (all claimed at t0) joined to the table
    expected = [
        len({key for key, name in rows if key in SENT and name in c}) for c in CAP_CATEGORIES
    ]
    assert expected == [5, 2, 3, 5, 0, 0]
    before = _dump(db_path)
    with closing(SqliteLedger(db_path)) as ledger:
        assert ledger.get_meta("schema_version") == str(migrations.LATEST_VERSION)
        with ledger.transaction() as txn:
            counted = [txn.delivered_count_since("u1", c, t0) for c in CAP_CATEGORIES]
            later = txn.delivered_count_since("u1", ["p"], t0 + timedelta(seconds=1))
    assert (counted, later) == (expected, 0)
    assert _dump(db_path) == before
    assert "send_categories" not in {
        n for (n,) in query_rows(db_path, "SELECT name FROM sqlite_master")
    }
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


# Hand edits of a v8 table that make it say other than the payloads.
MISMATCHES = [
    # a category the payload of k3 does not list
    "INSERT INTO send_categories (key, category) VALUES ('k3', 'extra')",
    # a category the payload of k7 lists, missing from the table
    "DELETE FROM send_categories WHERE key = 'k7' AND category = 'p'",
]


@pytest.mark.parametrize("edit", MISMATCHES)
def test_a_v8_file_whose_category_table_differs_from_the_payloads_is_refused_unchanged(
    db_path: Path, t0: datetime, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    _old_ledger(db_path, t0, monkeypatch, 8)
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(edit)
    rows = _categories(db_path)
    with pytest.raises(LedgerError, match=r"send 'k[37]': its send_categories rows differ"):
        SqliteLedger(db_path)
    assert _categories(db_path) == rows
    assert query_rows(db_path, "SELECT value FROM meta WHERE name = 'schema_version'") == [("8",)]


# -- migration v9 -> v10: no log index by event ------------------------------------------------


def test_migrating_a_v9_file_drops_the_log_index_by_event_and_still_reads_an_events_lines(
    db_path: Path, t0: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_ledger(db_path, t0, monkeypatch, 9)
    assert "decision_log_by_event" in index_names(db_path)
    before = _dump(db_path)
    with closing(SqliteLedger(db_path)) as ledger:
        assert ledger.get_meta("schema_version") == str(migrations.LATEST_VERSION)
        assert [entry.event_id for entry in ledger.decision_log("e1")] == ["e1"]
    assert _dump(db_path) == before
    assert "decision_log_by_event" not in index_names(db_path)
    assert "decision_log_by_user_at" in index_names(db_path)
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
