"""The PostgreSQL ledger: the SQLite ledger's semantics, shared safely by several workers.

Every transaction is one pooled connection in ``READ COMMITTED``. Correctness across workers
rests on four things:

- **Uniqueness.** ``INSERT ... ON CONFLICT DO NOTHING`` on the primary keys of sends and seen
  events: a second worker inserting the same key waits for the first to commit, then inserts
  nothing. The unique key stays the final guard whatever else goes wrong.
- **Claims.** :meth:`PostgresTxn.claim` locks the rows it moves with ``FOR UPDATE SKIP LOCKED``
  and re-checks ``state = 'scheduled'``: a key is claimed by one worker only, and a worker never
  waits for another's claim. ``due_sends`` takes no lock: it fills a cache of up to a horizon of
  sends, and locking them all would write a lock to every row. A skipped row is one another
  transaction is changing; should that transaction roll back, the send is picked up at the next
  refill of the scheduler's horizon, a delay, never a loss.
- **Per-user serialisation.** Cooldowns, caps and cancellations read a user's other sends and
  then write. Two workers deciding for one user at once would each miss the other's
  uncommitted write, so every read and write keyed by a user first takes
  ``pg_advisory_xact_lock(LOCK_USER, hashtext(user_id))``, held to the end of the transaction.
  The lock is taken in its own statement, pipelined with the one it guards (one round trip):
  in ``READ COMMITTED`` the next statement's snapshot then includes whatever the previous
  holder committed. ``SERIALIZABLE`` would also be
  correct, but would turn every such overlap into a failed batch to redo; a per-user lock row
  would need a write per user. A batch of events or of due sends first takes all its users'
  locks in one statement, in lock-key order (:meth:`PostgresTxn.lock_users`): batches sharing
  users then queue instead of locking them in opposite orders. A deadlock that still happens
  (PostgreSQL aborts one transaction) surfaces as :class:`LedgerUnavailableError` and the
  batch is retried.
- **Leases.** A claim records the worker (``lease_owner``) and ``lease_until = at + lease_s``.
  :meth:`PostgresTxn.recover_in_flight` settles this worker's ``sending`` sends and any whose
  lease expired (its worker died). ``lease_s`` must exceed the longest provider call: a send
  whose lease runs out while it is still being sent is settled as in doubt (or, under
  ``on_doubt: resend``, sent again). Leases compare against the callers' clocks, so workers'
  clocks must agree to well within ``lease_s``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from functools import partial
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from trigmail.errors import LedgerError
from trigmail.ledger.pg_rows import POSTGRES, ErrorScrubber
from trigmail.ledger.pg_schema import LOCK_EXCLUSIVE, migrate
from trigmail.ledger.pg_txn import PostgresTxn
from trigmail.ledger.semantics import Clock, utc_now
from trigmail.ledger.sql import SqlLedger, committed

logger = logging.getLogger(__name__)


def default_worker_id() -> str:
    """Return this process's worker id: ``<hostname>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class PostgresLedger(SqlLedger):
    """A ledger in a PostgreSQL database; see :class:`trigmail.ledger.base.Ledger`.

    Transactions may run from several threads at once, one per pooled connection; a thread
    cannot open a second transaction inside its first.

    Args:
        dsn: a ``postgresql://`` URL or libpq connection string; its password is never shown.
        worker_id: this worker's name in the leases of the sends it claims.
        lease_s: how long a claim vouches for a send before another worker may settle it.
        pool_min: connections kept open.
        pool_max: connections at most.
        clock: the time of writes that carry none (``created_at`` of a new send).
        connect_timeout_s: how long opening the ledger waits for the server.
        pool_timeout_s: how long a transaction waits for a free connection before
            :class:`LedgerUnavailableError`.

    Raises:
        LedgerError: when the database cannot be reached or a newer trigmail wrote it.
    """

    shared = True
    dialect = POSTGRES

    def __init__(
        self,
        dsn: str,
        *,
        worker_id: str | None = None,
        lease_s: float = 60.0,
        pool_min: int = 1,
        pool_max: int = 4,
        clock: Clock = utc_now,
        connect_timeout_s: float = 10.0,
        pool_timeout_s: float = 30.0,
    ) -> None:
        self._errors = ErrorScrubber(dsn)
        self._dsn = dsn
        self.worker_id = worker_id or default_worker_id()
        self.lease = timedelta(seconds=lease_s)
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        self._exclusive_lock = threading.Lock()
        self._exclusive_conn: psycopg.Connection[Any] | None = None
        self._closed = False
        with self._errors.guard(), self._connect() as conn:
            migrate(conn)
        self._pool = ConnectionPool(
            dsn,
            min_size=pool_min,
            max_size=pool_max,
            open=False,
            kwargs={"autocommit": True},
            # One round trip per transaction, so a server restart costs no failed batch per
            # pooled connection: a dead one is replaced before it is handed out.
            check=ConnectionPool.check_connection,
            name="trigmail-ledger",
            timeout=pool_timeout_s,
        )
        try:
            with self._errors.guard():
                self._pool.open(wait=True, timeout=connect_timeout_s)
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresLedger({self._errors.redacted_dsn!r}, worker_id={self.worker_id!r})"

    def _connect(self) -> psycopg.Connection[Any]:
        # libpq counts whole seconds, and treats anything under 2 as 2.
        timeout = max(round(self._connect_timeout_s), 2)
        return psycopg.connect(self._dsn, autocommit=True, connect_timeout=timeout)

    @contextmanager
    def _begun(self, begin: str) -> Iterator[PostgresTxn]:
        self._check_usable()
        self._local.busy = True
        try:
            with self._errors.guard(), self._pool.connection() as conn:
                conn.execute(begin)
                txn = PostgresTxn(conn, self._clock, self._errors, self.worker_id, self.lease)
                commit = partial(_commit, txn, conn)
                with committed(txn, commit, partial(self._rollback, conn)):
                    yield txn
        finally:
            self._local.busy = False

    def _check_usable(self) -> None:
        if self._closed:
            raise LedgerError("the ledger is closed")
        if getattr(self._local, "busy", False):
            raise LedgerError("a transaction is already open on this ledger")

    @staticmethod
    def _rollback(conn: psycopg.Connection[Any]) -> None:
        if conn.closed:
            return  # the pool discards a broken connection; the server rolled back
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            logger.warning("ledger: rollback failed: %s", type(exc).__name__)

    def transaction(self) -> AbstractContextManager[PostgresTxn]:
        return self._begun(POSTGRES.begin_write)

    def _label(self) -> str:
        return self._errors.redacted_dsn

    def acquire_exclusive(self, name: str) -> bool:
        """Try to become the only holder of ``name`` among every process using this database.

        The lock is a session-level advisory lock on a connection of its own, held until
        :meth:`close` (or until the process dies and the server drops the connection).
        Calling again for a name already held returns ``True``.

        Returns:
            ``True`` when this ledger holds the lock, ``False`` when another process does.
        """
        if self._closed:
            raise LedgerError("the ledger is closed")
        with self._exclusive_lock, self._errors.guard():
            if self._exclusive_conn is None:
                self._exclusive_conn = self._connect()
            row = self._exclusive_conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_EXCLUSIVE, name)
            ).fetchone()
        acquired = bool(row and row[0])
        if not acquired:
            logger.warning("ledger: %r is held by another process", name)
        return acquired

    def close(self) -> None:
        """Close the pool and release any lock :meth:`acquire_exclusive` took."""
        if self._closed:
            return
        self._closed = True
        with self._exclusive_lock:
            if self._exclusive_conn is not None:
                self._release_exclusive(self._exclusive_conn)
                self._exclusive_conn = None
        self._pool.close()

    @staticmethod
    def _release_exclusive(conn: psycopg.Connection[Any]) -> None:
        # A closed connection's locks are freed when its backend exits, a moment later: unlock
        # first, so a worker starting right after this one's close finds the name free.
        try:
            conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error as exc:
            logger.warning("ledger: releasing exclusive locks failed: %s", type(exc).__name__)
        finally:
            conn.close()


def _commit(txn: PostgresTxn, conn: psycopg.Connection[Any]) -> None:
    txn.flush()
    conn.execute("COMMIT")
