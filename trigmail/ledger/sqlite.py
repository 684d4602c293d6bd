"""The SQLite ledger: one WAL database file, one connection, ``BEGIN IMMEDIATE`` transactions.

``synchronous=FULL`` makes every commit durable before it returns, so a position committed with
its decisions is never ahead of them after a power cut. Uniqueness is ``INSERT ... ON CONFLICT
DO NOTHING`` plus the row count or the row returned: ``INSERT OR IGNORE`` would also swallow NOT
NULL and CHECK violations, which must fail loudly.

The statements and rules are the SQL core's (:mod:`trigmail.ledger.sql`); this module holds the
SQLite dialect and how one connection runs them.
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
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from trigmail.errors import LedgerError, LedgerUnavailableError
from trigmail.files import create_file
from trigmail.ledger.migrations import migrate
from trigmail.ledger.rows import Row, RowReader
from trigmail.ledger.semantics import Clock, utc_now
from trigmail.ledger.sql import Dialect, SqlLedger, SqlTxn, Statements, committed, json_text
from trigmail.ledger.sql.buffer import quiet_statements
from trigmail.ledger.sql.txn import Params

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Failures that pass once the lock holder or the disk is back: the daemon backs off and retries.
_UNAVAILABLE = ("database is locked", "disk i/o error", "database or disk is full")

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


# Caps count a user's sends by the categories their payload lists (schema v9): read for the few
# delivered sends of one user, never written apart.
_DELIVERED_COUNT = """
SELECT COUNT(*) FROM sends
WHERE user_id = ? AND claimed_at >= ? AND state IN {delivered}
    AND EXISTS (SELECT 1 FROM json_each(payload, '$.categories') AS c
        WHERE c.value IN (SELECT value FROM json_each(?)))
"""

# The seen ids and the log have no index on their time (a b-tree write per row inserted, for
# the retention timer alone); they are appended in time order, so pruning walks them in rowid
# order and deletes up to the first row still inside retention, reading one row more than it
# deletes. A row written with a clock set back is kept until the rows before it go: later than
# its time, never earlier. The first row inside retention stops it however old the rows after
# it; with none, every row goes.
_APPENDED_BEFORE = (
    "rowid < IFNULL((SELECT rowid FROM {table} WHERE {column} >= ? ORDER BY rowid LIMIT 1),"
    " (SELECT MAX(rowid) FROM {table}) + 1)"
)

# The sends other than scheduled are counted from their partial index (schema v11, whose
# predicate the read repeats), in its order, with no sort; the scheduled ones by a scan of the
# table in its order (the due index would look each row up). One GROUP BY of all sorted every
# send: 0.54 s against 0.26 s on a million (700,000 scheduled); v10's full index: 0.07 s.
_STATE_COUNTS = (
    "SELECT rule_id, state, COUNT(*) AS n FROM sends WHERE state <> 'scheduled'"
    " GROUP BY state, rule_id"
    " UNION ALL SELECT rule_id, state, COUNT(*) FROM sends NOT INDEXED"
    " WHERE state = 'scheduled' GROUP BY rule_id"
)

SQLITE = Dialect(
    time=to_us,
    # A batch's keys go in one statement, as a JSON array: a statement per key cost more than
    # the update itself.
    keys=json_text,
    rows=RowReader(time=from_us, json=json.loads),
    in_list="{column} IN (SELECT value FROM json_each(?))",
    # IMMEDIATE takes the write lock at once: a busy database fails here, before the engine
    # has decided anything, rather than at the first write.
    begin_write="BEGIN IMMEDIATE",
    begin_read="BEGIN",
    delivered_count=_DELIVERED_COUNT,
    # Without the hint the planner walks every scheduled send in due order
    # (sends_scheduled_by_due) to save a sort; one user has a handful of sends, everybody has
    # millions.
    user_index=" INDEXED BY sends_by_user_state",
    # The partial index holds the scheduled sends alone, in due order: the due reads walk it
    # from the front with no sort, and never step over a sent or cancelled send.
    due_index=" INDEXED BY sends_scheduled_by_due",
    # ``+state`` keeps the planner on the primary key: with the scheduled sends' index it would
    # walk every scheduled send to find a few keys.
    key_state="+state",
    inserted="",
    appended_before=_APPENDED_BEFORE,
    state_counts=_STATE_COUNTS,
)


# The page cache of the connection, in KiB (a negative cache_size is KiB, not pages). SQLite's
# default, 2 MiB, is less than a batch of 500 events dirties once the ledger is large: its random
# index inserts (sends by key and by user, seen ids, the log by user) touch a page each, so at
# 100,000 events the cache spilled dirty pages into the WAL before the commit wrote them again,
# and reread evicted pages from the file (strace, 100,000 events: WAL writes 424,788 -> 291,572,
# reads of the database file 134,164 -> 6). SQLite takes the pages as it needs them: a small
# ledger never fills it; serve's memory grows by at most this much.
CACHE_KIB = 65536

# The WAL is copied into the database (a checkpoint: the frames read back, the pages written,
# both files fsynced) once it holds this many pages, 64 MiB at SQLite's 4 KiB page, not SQLite's
# 1,000. A page a later batch writes again is copied once per checkpoint, so fewer, larger
# checkpoints copy fewer pages (strace, 100,000 events, 1,000 -> 4,000 pages: 107 -> 35
# checkpoints, pages copied 111,417 -> 62,942, fsyncs 523 -> 307); 4,000 -> 16,000 pages took
# ingest at 100,000 events from 16,719 to 17,509 events/s (means of 4 runs each, in turn). No
# checkpoint at all is slower again: every read looks its pages up in the WAL's index, which
# grows with the log. The WAL file stays under about this size.
CHECKPOINT_PAGES = 16000

# The sqlite3 module binds a None by asking it, and the protocol, for an adapter first: two
# failed attribute lookups, more than the rest of the value's binding (4 to 5 Nones per event
# ingested: the columns a new send leaves empty, the fields a log entry leaves out). With an
# adapter registered for None, that is one dictionary lookup; the adapter, in C, gives the None
# back, bound as NULL as before. The registry is the module's, so this holds for the process.
_NOTHING: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NOTHING.get)

_SEEN_AMONG = "SELECT event_id FROM seen_events WHERE event_id IN (SELECT value FROM json_each(?))"


def _commit(txn: SqliteTxn, conn: sqlite3.Connection) -> None:
    with _translated():
        txn.flush()
        conn.execute("COMMIT")


def _rollback(conn: sqlite3.Connection) -> None:
    if not conn.in_transaction:
        return  # SQLite already rolled back (a failed COMMIT, a full disk)
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        logger.warning("ledger: rollback failed: %s", exc)


class SqliteTxn(SqlTxn):
    """One transaction of a :class:`SqliteLedger`; see :class:`trigmail.ledger.base.LedgerTxn`."""

    dialect = SQLITE
    sql = Statements(SQLITE)
    # The claim statement too: SqlTxn.claim runs it only for keys that are not kept.
    quiet = quiet_statements(sql, _SEEN_AMONG, sql.claim)

    def __init__(self, conn: sqlite3.Connection, clock: Clock) -> None:
        super().__init__(clock)
        self._conn = conn
        # Writes no statement of this transaction reads back before its commit, made together
        # at the commit (or before the read that needs them): a statement each cost more than
        # the row. Transactions are serialised whole, so no other writer waits on these rows.
        self._expected: set[str] = set()  # ids given to expect_seen
        self._known_seen: set[str] = set()  # of those: decided before, or marked since
        self._new_seen: list[tuple[str, int]] = []

    def expect_seen(self, event_ids: Collection[str], at: datetime) -> None:
        wanted = [event_id for event_id in event_ids if event_id not in self._known_seen]
        if wanted:
            rows = self._rows(_SEEN_AMONG, (json_text(wanted),))
            self._known_seen.update(row["event_id"] for row in rows)
            self._expected.update(wanted)

    def expect_sends(self, keys: Iterable[str]) -> None:
        # Unread: computing the batch's keys (each dedupe template rendered a second time) costs
        # more than the ~0.7 SELECT per event it saves, even on a ledger with sends already
        # (callgrind, cg_ingest --prefill 20000: +1.2 % instructions per event with one read
        # of the keys gathered in a set, +0.8 % with a join over json_each instead of IN).
        pass

    def mark_seen(self, event_id: str, at: datetime) -> bool:
        if event_id not in self._expected:
            return super().mark_seen(event_id, at)
        if event_id in self._known_seen:
            return False
        self._check_open()
        self._known_seen.add(event_id)
        self._new_seen.append((event_id, to_us(at)))
        return True

    def seen_event(self, event_id: str) -> bool:
        return event_id in self._known_seen or super().seen_event(event_id)

    def flush(self) -> None:
        """Write the rows kept for the commit."""
        super().flush()
        if self._new_seen:
            self._conn.executemany(self.sql.mark_seen, self._new_seen)
            self._new_seen = []

    def _run(self, sql: str, params: Params = ()) -> int:
        return self._cursor(sql, params).rowcount

    def _cursor(self, sql: str, params: Params) -> sqlite3.Cursor:
        if not self._open:
            raise LedgerError("the transaction is over: open a new one")
        self._before(sql)
        return self._conn.execute(sql, params)

    def _rows(self, sql: str, params: Params = ()) -> list[Row]:
        rows: list[Row] = self._cursor(sql, params).fetchall()
        return rows

    def _scalar(self, sql: str, params: Params = ()) -> Any:
        row = self._cursor(sql, params).fetchone()
        return None if row is None else row[0]

    def _many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self._check_open()
        self._before(sql)
        self._conn.executemany(sql, params)

    def _insert_many(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        self._check_open()
        return self._conn.executemany(sql, params).rowcount

    def _insert(self, sql: str, params: Params) -> bool:
        return self._run(sql, params) == 1


class SqliteLedger(SqlLedger):
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
    dialect = SQLITE

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
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")

    @contextmanager
    def _begun(self, begin: str) -> Iterator[SqliteTxn]:
        with self._lock:
            conn = self._usable()
            with _translated():
                conn.execute(begin)
            self._busy = True
            txn = SqliteTxn(conn, self._clock)
            try:
                with (
                    committed(txn, partial(_commit, txn, conn), partial(_rollback, conn)),
                    _translated(),
                ):
                    yield txn
            finally:
                self._busy = False

    def _usable(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError("the ledger is closed")
        if self._busy:
            raise LedgerError("a transaction is already open on this ledger")
        return self._conn

    def transaction(self) -> AbstractContextManager[SqliteTxn]:
        return self._begun(SQLITE.begin_write)

    def _label(self) -> str:
        return str(self.path)

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
