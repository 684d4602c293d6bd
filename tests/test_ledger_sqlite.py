"""What only the SQLite ledger promises: schema, pragmas, constraints, locking and crash safety."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.ledger_helpers import make_send, write_old_categories
from trigmail.errors import LedgerError, LedgerUnavailableError
from trigmail.ledger import MemoryLedger, SqliteLedger, migrations, open_ledger
from trigmail.ledger.base import SendRecord, SendState
from trigmail.ledger.migrations import LATEST_VERSION
from trigmail.ledger.sqlite import SqliteTxn, ledger_error
from trigmail.rules.model import OnDoubt

WRITER = Path(__file__).with_name("ledger_writer.py")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(db_path: Path) -> Iterator[SqliteLedger]:
    opened = SqliteLedger(db_path)
    try:
        yield opened
    finally:
        opened.close()


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the file behind the ledger's back, with a connection of its own."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


# -- opening and the schema --------------------------------------------------------------------


def test_a_new_file_gets_the_latest_schema(ledger: SqliteLedger, db_path: Path) -> None:
    assert ledger.get_meta("schema_version") == str(LATEST_VERSION) == "11"
    names = {name for (name,) in query(db_path, "SELECT name FROM sqlite_master")}
    tables = {"meta", "sends", "seen_events", "positions", "decision_log"}
    assert tables | {"dead_letters", "cancel_marks"} <= names
    assert "send_categories" not in names  # a send's payload lists them (v9)
    indexes = {"sends_scheduled_by_due", "sends_by_user_state", "sends_by_rule_user_claimed"}
    assert indexes | {"decision_log_by_user_at"} <= names


def test_reopening_keeps_data_and_schema(db_path: Path, t0: datetime) -> None:
    with closing(SqliteLedger(db_path)) as first, first.transaction() as txn:
        txn.insert_send(make_send("k1", t0))
        txn.set_position("spool", "9")
    with closing(SqliteLedger(db_path)) as second, second.transaction() as txn:
        assert txn.send_exists("k1")
        assert txn.get_position("spool") == "9"
    assert query(db_path, "SELECT value FROM meta WHERE name = 'schema_version'") == [
        (str(LATEST_VERSION),)
    ]


def test_reopening_an_up_to_date_ledger_loads_no_migration_library(db_path: Path) -> None:
    # sqlite-utils (and pluggy) cost every start time: only a migration needs them.
    SqliteLedger(db_path).close()
    probe = (
        "import sys; from pathlib import Path; from trigmail.ledger import SqliteLedger; "
        f"SqliteLedger(Path({str(db_path)!r})).close(); print('sqlite_utils' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"


def test_a_version_5_ledger_migrates_and_keeps_its_sends(
    db_path: Path, t0: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as older:
        older.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:5])
        older.setattr(migrations, "LATEST_VERSION", 5)
        with closing(SqliteLedger(db_path)) as v5, v5.transaction() as txn:
            txn.insert_send(make_send("k1", t0, categories=("promo", "news")))
            txn.insert_send(make_send("k2", t0, on_doubt=OnDoubt.VERIFY))
        assert "state IN ('scheduled', 'sending'" in _sends_schema(db_path)
    write_old_categories(db_path)
    with closing(SqliteLedger(db_path)) as ledger:
        assert ledger.get_meta("schema_version") == str(LATEST_VERSION)
        kept = [ledger.get_send(key) for key in ("k1", "k2")]
        with ledger.transaction() as txn:
            txn.claim(["k1", "k2"], t0)
            counts = [txn.delivered_count_since("u1", [name], t0) for name in ("news", "promo")]
    assert [(send.key, send.state, send.on_doubt) for send in kept if send is not None] == [
        ("k1", SendState.SCHEDULED, OnDoubt.SKIP),
        ("k2", SendState.SCHEDULED, OnDoubt.VERIFY),
    ]
    assert counts == [1, 2]  # the categories the v5 table held: k1 news, promo; k2 promo
    assert query(db_path, "PRAGMA integrity_check") == [("ok",)]
    assert query(db_path, "PRAGMA foreign_key_check") == []
    assert "state IN ('scheduled', 'sending'" not in _sends_schema(db_path)


def _sends_schema(db_path: Path) -> str:
    return str(query(db_path, "SELECT sql FROM sqlite_master WHERE name = 'sends'")[0][0])


def test_connection_pragmas(ledger: SqliteLedger, db_path: Path) -> None:
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    conn = ledger._conn
    assert conn is not None
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -64 * 1024  # KiB: 64 MiB
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 16000  # pages: 64 MiB


def test_none_binds_through_a_registered_adapter_as_null(ledger: SqliteLedger) -> None:
    # Without an adapter, the sqlite3 module looks for one on None and on the protocol first.
    assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
    conn = ledger._conn
    assert conn is not None
    row = conn.execute("SELECT typeof(?), ? IS NULL", (None, None)).fetchone()
    assert tuple(row) == ("null", 1)


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    SqliteLedger(db_path).close()
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(LedgerError, match="schema version 99"):
        SqliteLedger(db_path)


def test_a_file_that_is_not_a_database_is_refused(db_path: Path) -> None:
    db_path.write_text("hello, not sqlite\n" * 100)
    with pytest.raises(LedgerError) as raised:
        SqliteLedger(db_path)
    assert not isinstance(raised.value, LedgerUnavailableError)


OPEN_CASES: list[tuple[str, type[object]]] = [
    (":memory:", MemoryLedger),  # the in-memory ledger of simulate
    ("memory", MemoryLedger),  # the same, spelled as a word
    ("nested/dir/ledger.db", SqliteLedger),  # a file, its directories created
]


@pytest.mark.parametrize(("target", "kind"), OPEN_CASES)
def test_open_ledger_picks_the_implementation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, kind: type[object]
) -> None:
    monkeypatch.chdir(tmp_path)
    with closing(open_ledger(target)) as opened:
        assert isinstance(opened, kind)
    assert (tmp_path / "nested/dir/ledger.db").exists() == (kind is SqliteLedger)


# -- constraints -------------------------------------------------------------------------------

BAD_SENDS: list[tuple[str, dict[str, Any], str]] = [
    ("no email", {"email": None}, "NOT NULL"),  # every send has a recipient
    ("bad on_doubt", {"on_doubt": "maybe"}, "CHECK"),  # only skip or resend
    ("negative step", {"step": -1}, "CHECK"),  # steps count from 0
    ("text step", {"step": "one"}, "INTEGER"),  # STRICT: a step is an integer
]


@pytest.mark.parametrize(
    ("change", "message"), [c[1:] for c in BAD_SENDS], ids=[c[0] for c in BAD_SENDS]
)
def test_a_constraint_violation_raises_and_rolls_back(
    ledger: SqliteLedger, t0: datetime, change: dict[str, Any], message: str
) -> None:
    bad: SendRecord = replace(make_send("bad", t0), **change)
    with pytest.raises(LedgerError, match=message) as raised, ledger.transaction() as txn:
        txn.mark_seen("e1", t0)
        txn.insert_send(bad)
    assert not isinstance(raised.value, LedgerUnavailableError)
    with ledger.transaction() as txn:
        assert not txn.seen_event("e1")
        assert not txn.send_exists("bad")


def test_a_state_outside_the_machine_is_refused_by_the_database(
    ledger: SqliteLedger, db_path: Path, t0: datetime
) -> None:
    with ledger.transaction() as txn:
        txn.insert_send(make_send("k1", t0))
    with closing(sqlite3.connect(db_path)) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE sends SET state = 'lost' WHERE key = 'k1'")


# The statements that find sends by a list of keys, and the one that finds a user's sends: each
# must go through its own index. Walking the state index instead reads every scheduled send, a
# million on a large ledger, for a handful of rows (ingest once slowed down fivefold so).
_PLANS = [
    ("claim", "sqlite_autoindex_sends_1 (key=?)"),
    ("finish", "sqlite_autoindex_sends_1 (key=?)"),
    ("retry_later", "sqlite_autoindex_sends_1 (key=?)"),
    ("cancel_sends", "sqlite_autoindex_sends_1 (key=?)"),
    ("pending_for_user", "sends_by_user_state (user_id=? AND state=?)"),
    ("last_delivered", "sends_by_rule_user_claimed (rule_id=? AND user_id=? AND claimed_at>?)"),
]


@pytest.mark.parametrize(("statement", "index"), _PLANS)
def test_statements_by_key_or_user_search_their_own_index(
    ledger: SqliteLedger, db_path: Path, statement: str, index: str
) -> None:
    sql = getattr(SqliteTxn.sql, statement)
    plan = query(db_path, "EXPLAIN QUERY PLAN " + sql, (None,) * sql.count("?"))
    searches = [row[3] for row in plan if str(row[3]).startswith("SEARCH sends")]
    assert searches == [f"SEARCH sends USING INDEX {index}"]


# A CHECK or a filter `x IN (a, b, c)` of more than two values builds a temporary table of its
# list each time a statement runs: on every send inserted, more than the insert itself cost.
_NO_TEMPORARY_TABLE = ["insert_send", "insert_sends", "insert_log", "mark_seen", "send_exists"]


@pytest.mark.parametrize("statement", _NO_TEMPORARY_TABLE)
def test_statements_of_each_event_build_no_temporary_table(
    ledger: SqliteLedger, db_path: Path, statement: str
) -> None:
    sql = getattr(SqliteTxn.sql, statement)
    program = query(db_path, "EXPLAIN " + sql, (None,) * sql.count("?"))
    assert "OpenEphemeral" not in {row[1] for row in program}


# -- errors and locking --------------------------------------------------------------------------

ERROR_CASES: list[tuple[sqlite3.Error, type[LedgerError]]] = [
    (sqlite3.OperationalError("database is locked"), LedgerUnavailableError),  # another writer
    (sqlite3.OperationalError("disk I/O error"), LedgerUnavailableError),  # a flaky disk
    (sqlite3.OperationalError("database or disk is full"), LedgerUnavailableError),  # no space
    (sqlite3.OperationalError("no such table: sends"), LedgerError),  # a broken file: no retry
    (sqlite3.IntegrityError("NOT NULL constraint failed"), LedgerError),  # a bug: no retry
]


@pytest.mark.parametrize(("error", "expected"), ERROR_CASES)
def test_sqlite_errors_are_translated(error: sqlite3.Error, expected: type[LedgerError]) -> None:
    assert type(ledger_error(error)) is expected


def test_a_locked_database_is_unavailable(ledger: SqliteLedger, db_path: Path) -> None:
    other = SqliteLedger(db_path, busy_timeout_s=0)
    with (
        closing(other),
        ledger.transaction(),
        pytest.raises(LedgerUnavailableError, match="locked"),
        other.transaction(),
    ):
        pass
    with closing(SqliteLedger(db_path, busy_timeout_s=0)) as other, other.transaction() as txn:
        txn.set_meta("free", "again")


def test_threads_share_one_ledger(ledger: SqliteLedger, t0: datetime) -> None:
    def write(thread: int) -> None:
        for number in range(25):
            with ledger.transaction() as txn:
                txn.insert_send(make_send(f"t{thread}-{number}", t0))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.status().counts[SendState.SCHEDULED] == 100


# -- crash safety ----------------------------------------------------------------------------------


def run_writer_until(db_path: Path, line: str, *options: str) -> None:
    """Start the writer, read its output until ``line``, then kill it with SIGKILL."""
    command = [sys.executable, str(WRITER), str(db_path), *options]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as writer:
        assert writer.stdin is not None and writer.stdout is not None
        try:
            for output in writer.stdout:
                if output.strip() == line:
                    break
            else:
                pytest.fail(f"the writer exited with {writer.wait()} before {line!r}")
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
    assert writer.returncode == -signal.SIGKILL


def batches_on_disk(db_path: Path) -> tuple[Counter[int], Counter[int], str | None]:
    """Return sends and seen ids per batch, and the committed position, after a crash."""
    with closing(SqliteLedger(db_path)) as ledger:
        assert query(db_path, "PRAGMA integrity_check") == [("ok",)]
        assert query(db_path, "PRAGMA foreign_key_check") == []
        with ledger.transaction() as txn:
            position = txn.get_position("spool")
    rows = query(db_path, "SELECT rule_id FROM sends")
    sends = Counter(int(rule.removeprefix("batch-")) for (rule,) in rows)
    seen = Counter(
        int(e.split("-")[1]) for (e,) in query(db_path, "SELECT event_id FROM seen_events")
    )
    return sends, seen, position


CRASHES: list[tuple[str, str, tuple[str, ...], int | None]] = [
    # killed while batch 4 holds half its rows, written but uncommitted
    ("paused mid-batch", "batch 4 paused", ("--pause-at", "4", "--padding", "4000"), 3),
    # killed at whatever point batch 4 reached after it began
    ("racing batch 4", "batch 4 started", (), None),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("line", "options", "whole"), [c[1:] for c in CRASHES], ids=[c[0] for c in CRASHES]
)
def test_sigkill_mid_batch_leaves_whole_batches_only(
    db_path: Path, line: str, options: tuple[str, ...], whole: int | None
) -> None:
    sends_per_batch = 1000
    run_writer_until(db_path, line, "--sends", str(sends_per_batch), *options)
    sends, seen, position = batches_on_disk(db_path)
    committed = sorted(sends)
    assert all(count == sends_per_batch for count in sends.values())
    assert seen == sends
    assert committed == list(range(1, len(committed) + 1))
    assert len(committed) >= 3  # batches 1-3 were reported committed before the kill
    if whole is not None:
        assert len(committed) == whole
    assert position == str(len(committed))
