"""The SQLite ledger: one WAL database file, one connection, ``BEGIN IMMEDIATE`` transactions.

``synchronous=FULL`` makes every commit durable before it returns, so a position committed with
its decisions is never ahead of them after a power cut. Uniqueness is ``INSERT ... ON CONFLICT
DO NOTHING`` plus the row count: ``INSERT OR IGNORE`` would also swallow NOT NULL and CHECK
violations, which must fail loudly.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from trigmail.decisions import LogEntry
from trigmail.errors import LedgerError, LedgerUnavailableError
from trigmail.files import create_file
from trigmail.ledger.base import CancelMark, DeadLetter, LedgerStatus, SendRecord, SendState
from trigmail.ledger.memory import (
    RECOVERED_ERROR,
    Clock,
    check_finish_state,
    resolution_note,
    utc_now,
)
from trigmail.ledger.migrations import migrate
from trigmail.ledger.rows import RowReader

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Failures that pass once the lock holder or the disk is back: the daemon backs off and retries.
_UNAVAILABLE = ("database is locked", "disk i/o error", "database or disk is full")

_INSERT_SEND = """
INSERT INTO sends (key, rule_id, step, user_id, email, event_id, due_at, payload, on_doubt,
    rules_version, state, cancel_match, attempts, message_id, last_error, reason,
    created_at, updated_at, claimed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO NOTHING
"""
_INSERT_LOG = """
INSERT INTO decision_log (at, event_id, user_id, rule, step, key, outcome, reason, due_at,
    detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_RECOVER = """
UPDATE sends SET
    state = CASE on_doubt WHEN 'resend' THEN 'scheduled' ELSE 'in_doubt' END,
    claimed_at = CASE on_doubt WHEN 'resend' THEN NULL ELSE claimed_at END,
    last_error = ?, updated_at = ?
WHERE state = 'sending'
RETURNING *
"""
# Settles an in-doubt send: sent as it is, or scheduled again now with its claim cleared.
_RESOLVE = """
UPDATE sends SET
    state = CASE ?1 WHEN 1 THEN 'sent' ELSE 'scheduled' END,
    due_at = CASE ?1 WHEN 1 THEN due_at ELSE ?2 END,
    claimed_at = CASE ?1 WHEN 1 THEN claimed_at ELSE NULL END,
    last_error = ?3, updated_at = ?2
WHERE key = ?4 AND state = 'in_doubt'
RETURNING *
"""
# A batch's keys go in one statement (as a JSON array): a statement per key cost more than the
# update itself. ``+state`` keeps the planner on the primary key: with the state index it
# walked every scheduled send to find a few keys.
_CLAIM = """
UPDATE sends SET state = 'sending', attempts = attempts + 1, claimed_at = ?, updated_at = ?
WHERE key IN (SELECT value FROM json_each(?)) AND +state = 'scheduled'
RETURNING *
"""
_FINISH = """
UPDATE sends SET state = ?, updated_at = ?,
    message_id = COALESCE(?, message_id), last_error = COALESCE(?, last_error)
WHERE key IN (SELECT value FROM json_each(?)) AND +state = 'sending'
"""
# The state lists below spell out DELIVERED_STATES and FINISHED_STATES of ledger.base.
_LAST_DELIVERED = """
SELECT MAX(claimed_at) FROM sends
WHERE rule_id = ? AND user_id = ? AND state IN ('sending', 'sent', 'in_doubt')
"""
# Without the hint the planner walks every scheduled send in due order (sends_by_state_due)
# to save a sort; one user has a handful of sends, everybody has millions.
_PENDING_FOR_USER = """
SELECT * FROM sends INDEXED BY sends_by_user_state
WHERE user_id = ? AND state = 'scheduled' AND rule_id IN (SELECT value FROM json_each(?))
ORDER BY due_at, key
"""
_DELIVERED_COUNT = """
SELECT COUNT(DISTINCT sends.key) FROM sends JOIN send_categories AS c ON c.key = sends.key
WHERE sends.user_id = ? AND sends.claimed_at >= ?
    AND sends.state IN ('sending', 'sent', 'in_doubt')
    AND c.category IN (SELECT value FROM json_each(?))
"""
_PRUNE = (
    """
    DELETE FROM send_categories WHERE key IN (
        SELECT key FROM sends
        WHERE updated_at < ? AND state IN ('sent', 'failed', 'cancelled', 'in_doubt'))
    """,
    """
    DELETE FROM sends
    WHERE updated_at < ? AND state IN ('sent', 'failed', 'cancelled', 'in_doubt')
    """,
    "DELETE FROM seen_events WHERE seen_at < ?",
    "DELETE FROM decision_log WHERE at < ?",
    "DELETE FROM dead_letters WHERE at < ?",
    "DELETE FROM cancel_marks WHERE at < ?",
)


# A name :meth:`SqliteLedger.acquire_exclusive` puts in its lock file's name as it is; any other
# name is hashed, so that no name can reach outside the database's directory.
_PLAIN_LOCK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def to_us(moment: datetime) -> int:
    """Return an aware datetime as integer microseconds since the epoch."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: the ledger needs timezone-aware times")
    return (moment - _EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


_ROWS = RowReader(time=from_us, json=json.loads)


# One encoder for every value: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json(value: Any) -> str:
    return _ENCODER.encode(value)


def ledger_error(exc: sqlite3.Error) -> LedgerError:
    """Return the trigmail error for a SQLite one: unavailable (retry later) or not."""
    message = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and message.lower().startswith(_UNAVAILABLE):
        return LedgerUnavailableError(f"ledger unavailable: {message}")
    return LedgerError(f"ledger error: {message}")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise ledger_error(exc) from exc


def _create(path: Path) -> None:
    """Create the database file 0640 whatever the umask: it holds emails and names.

    SQLite gives the ``-wal`` and ``-shm`` files it creates the database file's mode.
    """
    try:
        create_file(path)
    except OSError as exc:
        raise LedgerError(f"ledger {path}: cannot create: {exc.strerror or exc}") from None


def _send_params(send: SendRecord, created_at: datetime) -> tuple[Any, ...]:
    return (
        send.key,
        send.rule_id,
        send.step,
        send.user_id,
        send.email,
        send.event_id,
        to_us(send.due_at),
        _json(send.payload.to_json()),
        str(send.on_doubt),
        send.rules_version,
        str(send.state),
        _json(dict(send.cancel_match)),
        send.attempts,
        send.message_id,
        send.last_error,
        send.reason,
        to_us(created_at),
        to_us(send.updated_at or created_at),
        None if send.claimed_at is None else to_us(send.claimed_at),
    )


def _log_params(entry: LogEntry) -> tuple[Any, ...]:
    due_us = None if entry.due_at is None else to_us(entry.due_at)
    return (
        to_us(entry.at),
        entry.event_id,
        entry.user_id,
        entry.rule,
        entry.step,
        entry.key,
        entry.outcome.value,
        entry.reason.value,
        due_us,
        entry.detail,
    )


def _try_flock(path: Path) -> int | None:
    """Open ``path`` (created ``0600``) and take an exclusive flock on it without waiting.

    Returns:
        The open descriptor, which holds the lock until it is closed; ``None`` when another
        open file holds the lock.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LedgerError(f"ledger: cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise LedgerError(f"ledger: cannot lock {path}: {exc.strerror}") from exc
    return fd


class SqliteTxn:
    """One transaction of a :class:`SqliteLedger`; see :class:`trigmail.ledger.base.LedgerTxn`."""

    def __init__(self, conn: sqlite3.Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock
        self._open = True

    def _run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        if not self._open:
            raise LedgerError("the transaction is over: open a new one")
        return self._conn.execute(sql, params)

    def _sends(self, sql: str, params: Sequence[Any] = ()) -> list[SendRecord]:
        return [_ROWS.send(row) for row in self._run(sql, params).fetchall()]

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self._run(sql, params).fetchone()
        return None if row is None else row[0]

    # -- reads the engine decides from -------------------------------------------------
    def seen_event(self, event_id: str) -> bool:
        return bool(self._scalar("SELECT 1 FROM seen_events WHERE event_id = ?", (event_id,)))

    def send_exists(self, key: str) -> bool:
        return bool(self._scalar("SELECT 1 FROM sends WHERE key = ?", (key,)))

    def last_delivered_at(self, rule_id: str, user_id: str) -> datetime | None:
        latest = self._scalar(_LAST_DELIVERED, (rule_id, user_id))
        return _ROWS.maybe_time(latest)

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        return self._sends(_PENDING_FOR_USER, (user_id, _json(sorted(rule_ids))))

    def delivered_count_since(
        self, user_id: str, categories: Collection[str], since: datetime
    ) -> int:
        count: int = self._scalar(
            _DELIVERED_COUNT, (user_id, to_us(since), _json(sorted(categories)))
        )
        return count

    def lock_users(self, user_ids: Collection[str]) -> None:
        pass  # transactions are serialised whole: no lock per user

    # -- writes of the event path --------------------------------------------------------
    def cancel_marks_after(self, user_id: str, order: str) -> list[CancelMark]:
        rows = self._run(
            "SELECT user_id, ord, event, event_id, vals, at FROM cancel_marks"
            " WHERE user_id = ? AND ord > ? ORDER BY ord",
            (user_id, order),
        ).fetchall()
        return [
            CancelMark(row[0], row[1], row[2], row[3], json.loads(row[4]), from_us(row[5]))
            for row in rows
        ]

    def add_cancel_mark(self, mark: CancelMark) -> None:
        self._run(
            "INSERT INTO cancel_marks (user_id, ord, event, event_id, vals, at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, ord) DO NOTHING",
            (
                mark.user_id,
                mark.order,
                mark.event,
                mark.event_id,
                _json(mark.values),
                to_us(mark.at),
            ),
        )

    def mark_seen(self, event_id: str, at: datetime) -> bool:
        cursor = self._run(
            "INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            (event_id, to_us(at)),
        )
        return cursor.rowcount == 1

    def insert_send(self, send: SendRecord) -> bool:
        if send.state != SendState.SCHEDULED:
            raise ValueError(f"send {send.key}: a new send is scheduled, not {send.state}")
        created_at = self._clock() if send.created_at is None else send.created_at
        if self._run(_INSERT_SEND, _send_params(send, created_at)).rowcount != 1:
            return False
        categories = [(send.key, name) for name in dict.fromkeys(send.payload.categories)]
        self._conn.executemany(
            "INSERT INTO send_categories (key, category) VALUES (?, ?)", categories
        )
        return True

    def cancel_sends(self, keys: Collection[str], reason: str, at: datetime) -> list[str]:
        return [key for key in dict.fromkeys(keys) if self.drop(key, reason, at)]

    def log(self, entries: Sequence[LogEntry]) -> None:
        self._run("SELECT 1")  # refuses a finished transaction before executemany
        self._conn.executemany(_INSERT_LOG, [_log_params(entry) for entry in entries])

    def add_dead_letter(self, letter: DeadLetter) -> None:
        self._run(
            "INSERT INTO dead_letters (at, source, position, raw, reason, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                to_us(letter.at),
                letter.source,
                letter.position,
                letter.raw,
                letter.reason,
                letter.detail,
            ),
        )

    def get_position(self, source: str) -> str | None:
        position: str | None = self._scalar(
            "SELECT position FROM positions WHERE source = ?", (source,)
        )
        return position

    def set_position(self, source: str, position: str) -> None:
        self._run(
            "INSERT INTO positions (source, position, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (source) DO UPDATE"
            " SET position = excluded.position, updated_at = excluded.updated_at",
            (source, position, to_us(self._clock())),
        )

    # -- writes of the send path -----------------------------------------------------------
    def due_sends(self, until: datetime, limit: int) -> list[SendRecord]:
        return self._sends(
            "SELECT * FROM sends WHERE state = 'scheduled' AND due_at <= ?"
            " ORDER BY due_at, key LIMIT ?",
            (to_us(until), max(limit, 0)),
        )

    def next_due_at(self) -> datetime | None:
        return _ROWS.maybe_time(
            self._scalar("SELECT MIN(due_at) FROM sends WHERE state = 'scheduled'")
        )

    def claim(self, keys: Collection[str], at: datetime) -> list[SendRecord]:
        at_us = to_us(at)
        wanted = list(dict.fromkeys(keys))
        claimed = self._sends(_CLAIM, (at_us, at_us, _json(wanted)))
        order = {key: n for n, key in enumerate(wanted)}
        return sorted(claimed, key=lambda send: order[send.key])

    def finish(
        self,
        keys: Collection[str],
        state: SendState,
        at: datetime,
        message_id: str | None = None,
        error: str | None = None,
    ) -> None:
        check_finish_state(state)
        self._run(_FINISH, (state.value, to_us(at), message_id, error, _json(list(keys))))

    def retry_later(self, keys: Collection[str], due_at: datetime, error: str) -> None:
        now_us = to_us(self._clock())
        for key in dict.fromkeys(keys):
            self._run(
                "UPDATE sends SET state = 'scheduled', due_at = ?, last_error = ?,"
                " claimed_at = NULL, updated_at = ? WHERE key = ? AND state = 'sending'",
                (to_us(due_at), error, now_us, key),
            )

    def drop(self, key: str, reason: str, at: datetime) -> bool:
        cursor = self._run(
            "UPDATE sends SET state = 'cancelled', reason = ?, updated_at = ?"
            " WHERE key = ? AND state = 'scheduled'",
            (reason, to_us(at), key),
        )
        return cursor.rowcount == 1

    def defer(self, key: str, due_at: datetime) -> bool:
        cursor = self._run(
            "UPDATE sends SET due_at = ?, updated_at = ? WHERE key = ? AND state = 'scheduled'",
            (to_us(due_at), to_us(self._clock()), key),
        )
        return cursor.rowcount == 1

    def expire_leases(self, at: datetime) -> list[SendRecord]:
        return []  # one process, no leases: its own sends are settled at its start

    def recover_in_flight(self, at: datetime) -> list[SendRecord]:
        changed = self._sends(_RECOVER, (RECOVERED_ERROR, to_us(at)))
        return sorted(changed, key=lambda record: record.key)

    def resolve(self, key: str, sent: bool, at: datetime) -> SendRecord | None:
        previous = self._scalar(
            "SELECT last_error FROM sends WHERE key = ? AND state = 'in_doubt'", (key,)
        )
        note = resolution_note(sent, previous)
        found = self._sends(_RESOLVE, (int(sent), to_us(at), note, key))
        return found[0] if found else None

    def set_meta(self, name: str, value: str) -> None:
        self._run(
            "INSERT INTO meta (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    # -- reads of the ledger itself (status, tools) ------------------------------------------
    def get_send(self, key: str) -> SendRecord | None:
        found = self._sends("SELECT * FROM sends WHERE key = ?", (key,))
        return found[0] if found else None

    def get_meta(self, name: str) -> str | None:
        value: str | None = self._scalar("SELECT value FROM meta WHERE name = ?", (name,))
        return value

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        rows = self._run("SELECT * FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,))
        return [_ROWS.dead(row) for row in rows.fetchall()]

    def decision_log(self, event_id: str | None, limit: int) -> list[LogEntry]:
        rows = self._run(
            "SELECT * FROM decision_log WHERE ?1 IS NULL OR event_id = ?1"
            " ORDER BY id DESC LIMIT ?2",
            (event_id, limit),
        )
        return [_ROWS.log(row) for row in rows.fetchall()]

    def status(self, limit: int) -> LedgerStatus:
        counts = dict.fromkeys(SendState, 0)
        by_rule: dict[str, dict[SendState, int]] = {}
        grouped = "SELECT rule_id, state, COUNT(*) FROM sends GROUP BY rule_id, state"
        for rule_id, state, count in self._run(grouped).fetchall():
            counts[SendState(state)] += count
            by_rule.setdefault(rule_id, dict.fromkeys(SendState, 0))[SendState(state)] = count
        return LedgerStatus(
            counts=counts,
            by_rule=by_rule,
            next_due=self.due_sends(datetime.max.replace(tzinfo=UTC), limit),
            in_doubt=self._sends(
                "SELECT * FROM sends WHERE state = 'in_doubt'"
                " ORDER BY updated_at DESC, key LIMIT ?",
                (limit,),
            ),
            failed=self._sends(
                "SELECT * FROM sends WHERE state = 'failed' ORDER BY updated_at DESC, key LIMIT ?",
                (limit,),
            ),
            recent=self._sends(
                "SELECT * FROM sends ORDER BY updated_at DESC, key LIMIT ?", (limit,)
            ),
            dead_letters=self._scalar("SELECT COUNT(*) FROM dead_letters"),
            rules_version=self.get_meta("rules_version"),
        )

    def prune(self, before: datetime) -> int:
        before_us = (to_us(before),)
        # Categories go first: they reference the sends about to be deleted.
        self._run(_PRUNE[0], before_us)
        return sum(self._run(sql, before_us).rowcount for sql in _PRUNE[1:])

    def close(self) -> None:
        self._open = False


class SqliteLedger:
    """A durable ledger in one SQLite file; see :class:`trigmail.ledger.base.Ledger`.

    One connection serves every caller, one at a time, behind a lock.

    Args:
        path: the database file; it is created (and migrated) when missing.
        busy_timeout_s: how long a write waits for another process's lock before
            :class:`LedgerUnavailableError`.
        clock: the time of writes that carry none (``created_at`` of a new send).

    Raises:
        LedgerError: when the file is not a ledger, or a newer trigmail wrote it.
    """

    shared = False

    def __init__(
        self, path: str | Path, busy_timeout_s: float = 5.0, clock: Clock = utc_now
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._busy = False
        self._exclusive: dict[str, int] = {}  # name -> the descriptor holding its flock
        if str(path) != ":memory:":
            _create(self.path)
        with _translated():
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        try:
            with _translated():
                self._configure(self._conn, busy_timeout_s)
                migrate(self._conn)
        except BaseException:
            self._conn.close()
            raise

    @staticmethod
    def _configure(conn: sqlite3.Connection, busy_timeout_s: float) -> None:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise LedgerError(f"ledger: cannot use WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def _begun(self, begin: str) -> Iterator[SqliteTxn]:
        with self._lock:
            conn = self._usable()
            with _translated():
                conn.execute(begin)
            self._busy = True
            txn = SqliteTxn(conn, self._clock)
            try:
                with _translated():
                    yield txn
                    conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
            finally:
                txn.close()
                self._busy = False

    def _usable(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError("the ledger is closed")
        if self._busy:
            raise LedgerError("a transaction is already open on this ledger")
        return self._conn

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return  # SQLite already rolled back (a failed COMMIT, a full disk)
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            logger.warning("ledger: rollback failed: %s", exc)

    def transaction(self) -> AbstractContextManager[SqliteTxn]:
        # IMMEDIATE takes the write lock at once: a busy database fails here, before the
        # engine has decided anything, rather than at the first write.
        return self._begun("BEGIN IMMEDIATE")

    def status(self, limit: int = 10) -> LedgerStatus:
        with self._begun("BEGIN") as txn:
            return txn.status(limit)

    def get_send(self, key: str) -> SendRecord | None:
        with self._begun("BEGIN") as txn:
            return txn.get_send(key)

    def get_meta(self, name: str) -> str | None:
        with self._begun("BEGIN") as txn:
            return txn.get_meta(name)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._begun("BEGIN") as txn:
            return txn.dead_letters(limit)

    def decision_log(self, event_id: str | None = None, limit: int = 100) -> list[LogEntry]:
        with self._begun("BEGIN") as txn:
            return txn.decision_log(event_id, limit)

    def prune(self, before: datetime) -> int:
        with self._begun("BEGIN IMMEDIATE") as txn:
            removed = txn.prune(before)
        logger.info("ledger %s: pruned %d rows older than %s", self.path, removed, before)
        return removed

    # The lock is flock(2) on a sidecar file, never a lock on the database itself. SQLite locks
    # the database with POSIX byte-range locks, which belong to the process: opening and
    # closing the database file here would drop SQLite's own locks, and where flock is emulated
    # with POSIX locks (NFS) it would collide with them. A flock belongs to the open file: the
    # kernel frees it when the process dies, however it dies, so a crash leaves no stale lock.
    # The file stays when released: deleting it would let two processes lock two files of the
    # same name. Not taken on open: `status` and `ledger resolve` read beside a running serve.
    def acquire_exclusive(self, name: str) -> bool:
        """Try to become the only holder of ``name`` among every process using this database.

        The lock is a flock on ``<database>.<name>.lock`` beside the database (a hash stands
        for a name other than letters, digits, ``_`` and ``-``), held until :meth:`close` or
        until the process dies. Calling again for a name already held returns ``True``; another
        ledger object on the same file, even in this process, gets ``False``.

        Returns:
            ``True`` when this ledger holds the lock, ``False`` when another process does.

        Raises:
            LedgerError: when the ledger is closed, or the lock file cannot be opened or locked.
        """
        with self._lock:
            if self._conn is None:
                raise LedgerError("the ledger is closed")
            if name in self._exclusive:
                return True
            fd = _try_flock(self.lock_path(name))
            if fd is None:
                logger.warning("ledger %s: %r is held by another process", self.path, name)
                return False
            self._exclusive[name] = fd
            return True

    def lock_path(self, name: str) -> Path:
        """The sidecar file :meth:`acquire_exclusive` locks for ``name``."""
        if not _PLAIN_LOCK_NAME.fullmatch(name):
            name = hashlib.sha256(name.encode()).hexdigest()[:16]
        return self.path.with_name(f"{self.path.name}.{name}.lock")

    def close(self) -> None:
        """Close the connection and release any lock :meth:`acquire_exclusive` took."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            while self._exclusive:
                os.close(self._exclusive.popitem()[1])
