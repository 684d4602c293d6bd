"""One transaction of the PostgreSQL ledger (see :mod:`trigmail.ledger.postgres` for the design).

Its statements and rules are the SQL core's (:mod:`trigmail.ledger.sql`); this module adds
what only a ledger shared by several workers needs: per-user locks and the leases of claims.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from trigmail.decisions import LogEntry
from trigmail.ledger.pg_rows import POSTGRES, ErrorScrubber
from trigmail.ledger.pg_schema import LOCK_USER
from trigmail.ledger.rows import Row, log_rows
from trigmail.ledger.semantics import LEASE_EXPIRED_ERROR, Clock, as_utc
from trigmail.ledger.sql import SqlTxn, Statements, in_order
from trigmail.ledger.sql.buffer import quiet_statements
from trigmail.ledger.sql.txn import Params
from trigmail.sends import SendRecord

# SKIP LOCKED: a row another transaction holds is being claimed, dropped or deferred by it.
_CLAIM = """
UPDATE sends SET state = 'sending', attempts = attempts + 1, claimed_at = %(at)s,
    updated_at = %(at)s, lease_owner = %(owner)s, lease_until = %(until)s
WHERE state = 'scheduled' AND key IN (
    SELECT key FROM sends WHERE key = ANY(%(keys)s) AND state = 'scheduled'
    FOR UPDATE SKIP LOCKED)
RETURNING *
"""
# This worker's own sends (it crashed and restarted under the same id, or it is settling at
# start), and any other worker's whose lease ran out: that worker is gone.
_RECOVERABLE = """
SELECT * FROM sends
WHERE state = 'sending'
    AND (lease_owner = %(owner)s OR lease_until IS NULL OR lease_until <= %(at)s)
FOR UPDATE
"""
# A batch's new event ids in one statement, in one order every worker follows (two batches
# sharing ids wait for each other rather than deadlock); the ids it inserted come back.
_MARK_SEEN_MANY = """
INSERT INTO seen_events (event_id, seen_at)
SELECT event_id, %s FROM (SELECT DISTINCT unnest(%s::text[]) AS event_id ORDER BY 1) AS ids
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
# A batch's decisions: COPY sends the rows as one stream, where an INSERT per row costs a
# bind and an execute each on both sides.
_COPY_LOG = (
    "COPY decision_log (at, event_id, user_id, rule, step, key, outcome, reason, due_at, detail)"
    " FROM STDIN"
)
_UNMARK_SEEN = "DELETE FROM seen_events WHERE event_id = ANY(%s)"
_EXPIRED = "SELECT * FROM sends WHERE state = 'sending' AND lease_until <= %s FOR UPDATE"
_LOCK_ONE = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
# The subquery's order is the order the outer select takes the locks in: by lock key, the same
# in every worker, so two batches sharing users queue instead of deadlocking.
_LOCK_MANY = (
    "SELECT pg_advisory_xact_lock(%s, key) FROM"
    " (SELECT DISTINCT hashtext(user_id) AS key"
    " FROM unnest(%s::text[]) AS user_id ORDER BY key) AS ordered"
)


class PostgresTxn(SqlTxn):
    """One transaction of a PostgreSQL ledger; see :class:`trigmail.ledger.base.LedgerTxn`."""

    dialect = POSTGRES
    sql = Statements(POSTGRES)
    quiet = quiet_statements(sql, _MARK_SEEN_MANY, _UNMARK_SEEN)
    # Another worker's claims, recoveries and lease expiries may move any row of sends: the
    # copy of the locked users forgets what this transaction's writes touch (see
    # trigmail.ledger.sql.users).
    follows_writes = False

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        clock: Clock,
        errors: ErrorScrubber,
        worker_id: str,
        lease: timedelta,
    ) -> None:
        super().__init__(clock)
        self._conn = conn
        self._dicts = conn.cursor(row_factory=dict_row)
        self._tuples = conn.cursor()
        self._locks = conn.cursor()
        self._errors = errors
        self._worker_id = worker_id
        self._lease = lease
        self._locked_users: set[str] = set()
        # expect_seen's ids: those it inserted and no mark_seen has taken yet, and the rest.
        self._fresh_seen: set[str] = set()
        self._expected_seen: set[str] = set()

    def _before(self, sql: str) -> None:
        if sql not in self.quiet:
            self._users.forget()
        super()._before(sql)

    # -- the batch's users, read at once (see trigmail.ledger.sql.users) ---------------------
    def expect_reads(self, pending: Collection[str], delivered: Collection[str]) -> None:
        pass  # the locked users are read at once: only their rows no other worker changes

    def _read_at_once(
        self, pending: list[str], delivered: list[str]
    ) -> tuple[list[Row], list[tuple[str, str, datetime]]]:
        self._check_open()
        with self._errors.guard():
            with self._conn.pipeline():
                scheduled = self._dicts.execute(self.sql.scheduled_of, (pending,))
                latest = self._tuples.execute(self.sql.delivered_of, (delivered,))
            rows: list[Row] = list(scheduled.fetchall())
            time = self.dialect.rows.time
            last = [(rule, user, time(at)) for rule, user, at in latest.fetchall()]
        return rows, last

    def _run(self, sql: str, params: Params = ()) -> int:
        self._check_open()
        self._before(sql)
        with self._errors.guard():
            return self._tuples.execute(sql, params).rowcount

    def _scalar(self, sql: str, params: Params = ()) -> Any:
        self._check_open()
        self._before(sql)
        with self._errors.guard():
            row = self._tuples.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _rows(self, sql: str, params: Params = ()) -> list[Row]:
        self._check_open()
        self._before(sql)
        with self._errors.guard():
            rows = self._dicts.execute(sql, params).fetchall()
        return list(rows)

    def _many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self._check_open()
        self._before(sql)
        with self._errors.guard():
            self._tuples.executemany(sql, params)

    def _insert_many(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        self._check_open()
        with self._errors.guard():
            self._tuples.executemany(sql, params)
            return self._tuples.rowcount

    def log(self, entries: Sequence[LogEntry]) -> None:
        self._check_open()
        if not entries:
            return
        rows = log_rows(entries, self.dialect.time, self.dialect.text)
        with self._errors.guard(), self._tuples.copy(_COPY_LOG) as copy:
            for row in rows:
                copy.write_row(row)

    def _as_user(self, user_id: str) -> AbstractContextManager[Any]:
        if user_id in self._locked_users:
            return super()._as_user(user_id)
        return self._locking(user_id)

    @contextmanager
    def _locking(self, user_id: str) -> Iterator[None]:
        """Run the block's statements after taking ``user_id``'s lock (see the module).

        The lock and the block's statements travel in one pipeline: one round trip, yet still
        separate statements, so the block's snapshot is taken once the lock is held.
        """
        self._check_open()
        with self._errors.guard(), self._conn.pipeline():
            self._locks.execute(_LOCK_ONE, (LOCK_USER, user_id))
            yield
        self._locked_users.add(user_id)

    def lock_users(self, user_ids: Collection[str]) -> None:
        wanted = sorted(set(user_ids) - self._locked_users)
        if not wanted:
            return
        self._check_open()
        with self._errors.guard():
            self._locks.execute(_LOCK_MANY, (LOCK_USER, wanted))
        self._locked_users.update(wanted)
        self._expected_users.expect(wanted, wanted)

    # -- seen ids ------------------------------------------------------------------------------
    def expect_seen(self, event_ids: Collection[str], at: datetime) -> None:
        """Insert the batch's ids at once, before any of its events is decided: a worker
        deciding another copy of one waits on its row until this batch commits, as with one
        statement per id. Ids no :meth:`mark_seen` took are deleted before the commit."""
        wanted = sorted(set(event_ids) - self._expected_seen)
        if not wanted:
            return
        rows = self._rows(_MARK_SEEN_MANY, (as_utc(at), wanted))
        self._fresh_seen.update(row["event_id"] for row in rows)
        self._expected_seen.update(wanted)

    def seen_event(self, event_id: str) -> bool:
        return event_id not in self._fresh_seen and super().seen_event(event_id)

    def mark_seen(self, event_id: str, at: datetime) -> bool:
        if event_id not in self._expected_seen:
            return super().mark_seen(event_id, at)
        if event_id in self._fresh_seen:
            self._fresh_seen.discard(event_id)
            return True
        return False

    def flush(self) -> None:
        """Before the commit: forget the ids expected but never marked (the batch stopped
        before their events)."""
        super().flush()
        if self._fresh_seen:
            self._run(_UNMARK_SEEN, (sorted(self._fresh_seen),))
            self._fresh_seen.clear()

    # -- the leases of claims ----------------------------------------------------------------
    def expect_claims(self, keys: Iterable[str]) -> None:
        # A claim here locks its rows (another worker may be claiming them) and takes a lease:
        # decided from a row read earlier it could not skip a row another worker holds.
        pass

    def claim(self, keys: Collection[str], at: datetime) -> list[SendRecord]:
        at = as_utc(at)
        wanted = list(dict.fromkeys(keys))
        params = {"at": at, "owner": self._worker_id, "until": at + self._lease, "keys": wanted}
        return in_order(self._sends(_CLAIM, params), wanted)

    def expire_leases(self, at: datetime) -> list[SendRecord]:
        at = as_utc(at)
        return self._recover(self._sends(_EXPIRED, (at,)), at, LEASE_EXPIRED_ERROR)

    def recover_in_flight(self, at: datetime) -> list[SendRecord]:
        at = as_utc(at)
        return self._recover(self._sends(_RECOVERABLE, {"owner": self._worker_id, "at": at}), at)
