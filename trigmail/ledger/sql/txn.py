"""The SQL ledgers' transactions, written once for SQLite and PostgreSQL.

Each backend adds only how it runs a statement on its driver and, for PostgreSQL, its locks
and leases (:mod:`trigmail.ledger.pg_txn`); what differs between the two databases otherwise is
data, held by their :class:`~trigmail.ledger.sql.dialect.Dialect`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any, ClassVar

from trigmail.decisions import LogEntry, Payload
from trigmail.errors import LedgerError
from trigmail.ledger.base import CancelMark, DeadLetter
from trigmail.ledger.rows import Row, log_rows
from trigmail.ledger.semantics import (
    RECOVERED_ERROR,
    Clock,
    as_utc,
    recovered,
    resolved,
)
from trigmail.ledger.sql.buffer import SendBuffer, as_stored
from trigmail.ledger.sql.dialect import Dialect, Statements, json_text
from trigmail.ledger.sql.engine_reads import EngineReads
from trigmail.ledger.sql.users import ExpectedUsers, UserReads
from trigmail.sends import (
    SendRecord,
    SendState,
    cancelled,
    check_finish_state,
    check_new,
    claimed,
)

logger = logging.getLogger(__name__)

# Positional parameters, or named ones (``%(name)s``, PostgreSQL's own statements).
Params = Sequence[Any] | Mapping[str, Any]


def in_order(records: list[SendRecord], keys: Sequence[str]) -> list[SendRecord]:
    """Return ``records`` in the order of ``keys``, as the one-by-one ledgers return them."""
    rank = {key: index for index, key in enumerate(keys)}
    return sorted(records, key=lambda record: rank[record.key])


_NO_LOCK = nullcontext()
# Where the encoded payload and cancel match are in a row of :meth:`SqlTxn._send_params`.
_PAYLOAD_PARAM = 7
_CANCEL_MATCH_PARAM = 11


class SqlTxn(EngineReads):
    """One transaction of a SQL ledger; see :class:`trigmail.ledger.base.LedgerTxn`.

    A backend says how to run a statement (:meth:`_run`, :meth:`_rows`, :meth:`_scalar`,
    :meth:`_many`) and names its :attr:`dialect` and :attr:`sql`; everything else is here.
    """

    dialect: ClassVar[Dialect]
    sql: ClassVar[Statements]
    # Whether the copy of the batch's users follows this transaction's writes (see
    # trigmail.ledger.sql.users): only where no other writer can change their rows meanwhile.
    follows_writes: ClassVar[bool] = True

    # Statements that never touch a row of sends, or touch only one user's or one key's, which
    # their methods check against the kept sends and claims: they run without writing them.
    quiet: ClassVar[frozenset[str]]

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._open = True
        self._buffer = SendBuffer()
        self._users = UserReads(self.follows_writes, self.dialect.rows.send)
        self._expected_users = ExpectedUsers()

    def _before(self, sql: str) -> None:
        """Write the kept sends and claims before a statement that could read them, and forget
        the rows read for claims, and the users read, that it could change (a drop or a defer:
        their own)."""
        if sql in self.quiet:
            return
        sql_of = self.sql
        if sql is not sql_of.drop and sql is not sql_of.defer:
            self._users.forget()
        buffer = self._buffer
        if buffer.dirty or buffer.rows:
            if buffer.dirty:
                self._flush_sends()  # first: the kept sends' rows it writes are known after it
            if buffer.rows and sql is not sql_of.drop and sql is not sql_of.defer:
                buffer.rows.clear()

    def _flush_sends(self) -> None:
        kept, claims = self._buffer.take()
        params = [row for _, row in kept]
        if kept and self._insert_many(self.sql.insert_sends, params) != len(params):
            # Only on PostgreSQL: another worker committed a key found absent here.
            raise LedgerError("a new send's key was taken meanwhile: the batch is decided again")
        # The claims held back: one statement per claim time (a batch has one).
        by_time: dict[datetime | None, list[str]] = {}
        for record in claims:
            by_time.setdefault(record.claimed_at, []).append(record.key)
        for at, keys in by_time.items():
            claim = (self._time(at), self._time(at), self.dialect.keys(keys))
            if self._run(self.sql.write_claims, claim) != len(keys):
                # Never on SQLite, whose transactions are serialised whole: a row read for a
                # claim changed behind it. Nothing of the batch is committed.
                raise LedgerError("a claimed send changed meanwhile: the batch is decided again")

    def _for_user(self, user_id: str) -> None:
        """Write the kept sends and claims before a read of ``user_id``'s sends, if some are
        theirs."""
        if user_id in self._buffer.users:
            self._flush_sends()

    def flush(self) -> None:
        """Before the commit: write what was kept for it."""
        self._flush_sends()

    # -- how the driver runs a statement -----------------------------------------------------
    def _run(self, sql: str, params: Params = ()) -> int:
        """Execute a statement; return its row count."""
        raise NotImplementedError

    def _rows(self, sql: str, params: Params = ()) -> list[Row]:
        """Execute a query; return its rows, readable by column name."""
        raise NotImplementedError

    def _scalar(self, sql: str, params: Params = ()) -> Any:
        """Execute a query; return the first column of its first row, or ``None``."""
        raise NotImplementedError

    def _many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """Execute a statement once per parameter tuple."""
        raise NotImplementedError

    def _insert_many(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        """Execute an insert once per parameter tuple; return how many rows it inserted."""
        raise NotImplementedError

    def _as_user(self, user_id: str) -> AbstractContextManager[Any]:
        """Run the block's statements under ``user_id``'s lock, where the ledger needs one."""
        return _NO_LOCK

    def lock_users(self, user_ids: Collection[str]) -> None:
        pass  # transactions are serialised whole: no lock per user

    def _insert(self, sql: str, params: Params) -> bool:
        """Run an ``INSERT ... ON CONFLICT DO NOTHING``; return whether it inserted the row."""
        return bool(self._rows(sql, params))

    def _check_open(self) -> None:
        if not self._open:
            raise LedgerError("the transaction is over: open a new one")

    def _sends(self, sql: str, params: Params = ()) -> list[SendRecord]:
        send = self.dialect.rows.send
        return [send(row) for row in self._rows(sql, params)]

    def _time(self, moment: datetime | None) -> Any:
        return None if moment is None else self.dialect.time(moment)

    # -- writes of the event path --------------------------------------------------------
    def add_cancel_mark(self, mark: CancelMark) -> None:
        values = json_text(mark.values)
        params = (mark.user_id, mark.order, mark.event, mark.event_id, values)
        self._run(self.sql.add_cancel_mark, (*params, self.dialect.time(mark.at)))

    def mark_seen(self, event_id: str, at: datetime) -> bool:
        return self._run(self.sql.mark_seen, (event_id, self.dialect.time(at))) == 1

    def expect_seen(self, event_ids: Collection[str], at: datetime) -> None:
        pass  # one statement per id, each inserted before its event is decided

    def expect_sends(self, keys: Iterable[str]) -> None:
        buffer = self._buffer
        wanted = set(keys)
        wanted.difference_update(buffer.kept, buffer.present, buffer.absent)
        if not wanted:
            return
        rows = self._rows(self.sql.sends_among, (self.dialect.keys(list(wanted)),))
        found = {row["key"] for row in rows}
        buffer.present |= found
        buffer.absent |= wanted - found

    def insert_send(self, send: SendRecord) -> bool:
        check_new(send)
        created_at = self._clock() if send.created_at is None else send.created_at
        params = self._send_params(send, created_at)
        if send.key in self._buffer.kept:
            return False
        stored = as_stored(send, created_at)
        # A cancellation deciding for this user in another worker must see this send.
        with self._as_user(send.user_id):
            if send.key in self._buffer.absent:
                self._check_open()
                self._buffer.keep(stored, params)
            else:
                self._flush_sends()  # the sends keep the order they were inserted in
                if not self._insert(self.sql.insert_send, params):
                    return False
                self._buffer.absent.discard(send.key)
        self._users.inserted(stored)
        return True

    def _send_params(
        self, send: SendRecord, created_at: datetime, documents: tuple[Any, Any] | None = None
    ) -> list[Any]:
        """The row of ``send``; ``documents``: its payload and cancel match as already encoded
        for the same send (a claim changes neither)."""
        d = self.dialect
        time = d.time
        if documents is None:
            documents = (self._payload_document(send.payload), d.document(dict(send.cancel_match)))
        params = [
            send.key,
            send.rule_id,
            send.step,
            send.user_id,
            send.email,
            send.event_id,
            time(send.due_at),
            documents[0],
            str(send.on_doubt),
            send.rules_version,
            str(send.state),
            documents[1],
            send.attempts,
            send.message_id,
            send.last_error,
            send.reason,
            time(created_at),
            time(send.updated_at or created_at),
            self._time(send.claimed_at),
        ]
        if d.categories_column:
            params.append(list(dict.fromkeys(send.payload.categories)))
        return params

    def _payload_document(self, payload: Payload) -> Any:
        # The text ingest encoded to check the payload's size, stored as it is.
        try:
            return self.dialect.encoded(payload.json_text())
        except ValueError:  # NaN or infinity, which only ingest refuses: stored as ever
            return self.dialect.document(payload.to_json())

    def cancel_sends(self, keys: Collection[str], reason: str, at: datetime) -> list[str]:
        d = self.dialect
        buffer = self._buffer
        wanted = list(dict.fromkeys(keys))
        moved = self._cancel_kept(wanted, reason, as_utc(at))
        # A claim held back is sending, whatever its unwritten row says: never cancelled.
        rest = [key for key in wanted if key not in buffer.claims and key not in buffer.kept]
        if rest:
            rows = self._rows(self.sql.cancel_sends, (reason, d.time(at), d.keys(rest)))
            moved.update(row["key"] for row in rows)
            for key in moved:
                if key in buffer.rows:
                    buffer.rows[key] = None
        done = [key for key in wanted if key in moved]
        self._users.cancelled(done)
        return done

    def _cancel_kept(self, wanted: list[str], reason: str, at: datetime) -> set[str]:
        """Cancel the kept sends among ``wanted`` still scheduled: their rows are written once,
        cancelled."""
        kept = self._buffer.kept
        moved = set()
        for key in wanted:
            if key in kept and kept[key][0].state is SendState.SCHEDULED:
                stored, params = kept[key]
                record = cancelled(stored, reason, at)
                documents = (params[_PAYLOAD_PARAM], params[_CANCEL_MATCH_PARAM])
                kept[key] = (record, self._send_params(record, record.created_at or at, documents))
                moved.add(key)
        return moved

    def log(self, entries: Sequence[LogEntry]) -> None:
        self._check_open()
        self._many(self.sql.insert_log, log_rows(entries, self.dialect.time, self.dialect.text))

    def add_dead_letter(self, letter: DeadLetter) -> None:
        d = self.dialect
        self._run(
            self.sql.add_dead_letter,
            (
                d.time(letter.at),
                d.text(letter.source),
                d.text(letter.position),
                d.text(letter.raw),
                letter.reason,
                d.text(letter.detail),
            ),
        )

    def get_position(self, source: str) -> str | None:
        position: str | None = self._scalar(self.sql.get_position, (source,))
        return position

    def set_position(self, source: str, position: str) -> None:
        at = self.dialect.time(self._clock())
        self._run(self.sql.set_position, (source, position, at))

    # -- writes of the send path -----------------------------------------------------------
    def due_sends(self, until: datetime, limit: int) -> list[SendRecord]:
        return self._sends(self.sql.due_sends, (self.dialect.time(until), max(limit, 0)))

    def next_due_at(self) -> datetime | None:
        return self.dialect.rows.maybe_time(self._scalar(self.sql.next_due_at))

    def expect_claims(self, keys: Iterable[str]) -> None:
        wanted = self._buffer.unread(list(keys))
        if wanted:
            self._buffer.read(self._sends(self.sql.sends_of, (self.dialect.keys(wanted),)))

    def claim(self, keys: Collection[str], at: datetime) -> list[SendRecord]:
        d = self.dialect
        wanted = list(dict.fromkeys(keys))
        moved = self._claim_kept(wanted, as_utc(at))
        buffer = self._buffer
        if buffer.rows:
            self._check_open()
            moved += buffer.claim_read(wanted, as_utc(at))
        rest = [key for key in wanted if not buffer.known(key)]
        if rest:
            at_value = d.time(at)
            moved += self._sends(self.sql.claim, (at_value, at_value, d.keys(rest)))
        self._users.claimed(moved)
        return in_order(moved, wanted)

    def _claim_kept(self, wanted: list[str], at: datetime) -> list[SendRecord]:
        """Claim the kept sends among ``wanted``: their rows are written once, claimed."""
        kept = self._buffer.kept
        moved = []
        for key in wanted:
            if key in kept and kept[key][0].state is SendState.SCHEDULED:
                stored, params = kept[key]
                record = claimed(stored, at)
                documents = (params[_PAYLOAD_PARAM], params[_CANCEL_MATCH_PARAM])
                kept[key] = (record, self._send_params(record, record.created_at or at, documents))
                moved.append(record)
        return moved

    def finish(
        self,
        keys: Collection[str],
        state: SendState,
        at: datetime,
        message_id: str | None = None,
        error: str | None = None,
    ) -> None:
        check_finish_state(state)
        d = self.dialect
        params = (state.value, d.time(at), message_id, error, d.keys(list(dict.fromkeys(keys))))
        self._run(self.sql.finish, params)

    def retry_later(self, keys: Collection[str], due_at: datetime, error: str) -> None:
        d = self.dialect
        now = d.time(self._clock())
        params = (d.time(due_at), error, now, d.keys(list(dict.fromkeys(keys))))
        self._run(self.sql.retry_later, params)

    def drop(self, key: str, reason: str, at: datetime) -> bool:
        dropped = self._run(self.sql.drop, (reason, self.dialect.time(at), key)) == 1
        self._buffer.rows.pop(key, None)  # after the statement, which may write the kept row
        if dropped:
            self._users.cancelled([key])
        return dropped

    def defer(self, key: str, due_at: datetime) -> bool:
        d = self.dialect
        deferred = self._run(self.sql.defer, (d.time(due_at), d.time(self._clock()), key)) == 1
        self._buffer.rows.pop(key, None)
        if deferred:
            self._users.forget_keys([key])  # due again later: read the user again
        return deferred

    def restore(self, key: str, at: datetime) -> SendRecord | None:
        restored = self._sends(self.sql.restore, (self.dialect.time(at), key))
        return restored[0] if restored else None

    def move_cancel_mark(self, user_id: str, event_id: str, order: str) -> None:
        self._run(self.sql.move_cancel_mark, (order, user_id, event_id, order))

    def rematch(self, key: str, cancel_match: Mapping[str, Any]) -> bool:
        params = (self.dialect.document(dict(cancel_match)), key)
        return self._run(self.sql.rematch, params) == 1

    def expire_leases(self, at: datetime) -> list[SendRecord]:
        return []  # one process, no leases: its own sends are settled at its start

    def recover_in_flight(self, at: datetime) -> list[SendRecord]:
        return self._recover(self._sends(self.sql.sending), as_utc(at))

    def _recover(
        self, sending: list[SendRecord], at: datetime, error: str = RECOVERED_ERROR
    ) -> list[SendRecord]:
        """Settle ``sending`` sends as :func:`~trigmail.ledger.semantics.recovered` says."""
        changed = [recovered(record, at, error) for record in sorted(sending, key=_key)]
        self._settle(changed, SendState.SENDING)
        return changed

    def resolve(self, key: str, sent: bool, at: datetime) -> SendRecord | None:
        found = self._sends(self.sql.in_state, (key, SendState.IN_DOUBT.value))
        if not found:
            return None
        settled = resolved(found[0], sent, as_utc(at))
        self._settle([settled], SendState.IN_DOUBT)
        return settled

    def _settle(self, records: Sequence[SendRecord], was: SendState) -> None:
        """Write back sends the shared semantics moved out of state ``was``."""
        params = [
            (
                record.state.value,
                self.dialect.time(record.due_at),
                self._time(record.claimed_at),
                record.last_error,
                self._time(record.updated_at),
                record.key,
                was.value,
            )
            for record in records
        ]
        if params:
            self._many(self.sql.settle, params)

    def set_meta(self, name: str, value: str) -> None:
        self._run(self.sql.set_meta, (name, value))

    def close(self) -> None:
        self._open = False


def _key(record: SendRecord) -> str:
    return record.key
