"""One transaction of the PostgreSQL ledger (see :mod:`trigmail.ledger.postgres` for the design)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from trigmail.decisions import LogEntry
from trigmail.errors import LedgerError
from trigmail.ledger.base import CancelMark, DeadLetter, LedgerStatus, SendRecord, SendState
from trigmail.ledger.memory import (
    RECOVERED_ERROR,
    Clock,
    as_utc,
    check_finish_state,
    resolution_note,
)
from trigmail.ledger.pg_rows import (
    ROWS,
    ErrorScrubber,
    dead_params,
    log_params,
    send_params,
)
from trigmail.ledger.pg_schema import LOCK_USER

_INSERT_SEND = """
INSERT INTO sends (key, rule_id, step, user_id, email, event_id, due_at, payload, categories,
    on_doubt, rules_version, state, cancel_match, attempts, message_id, last_error, reason,
    created_at, updated_at, claimed_at)
VALUES (%(key)s, %(rule_id)s, %(step)s, %(user_id)s, %(email)s, %(event_id)s, %(due_at)s,
    %(payload)s, %(categories)s, %(on_doubt)s, %(rules_version)s, %(state)s, %(cancel_match)s,
    %(attempts)s, %(message_id)s, %(last_error)s, %(reason)s, %(created_at)s, %(updated_at)s,
    %(claimed_at)s)
ON CONFLICT (key) DO NOTHING
RETURNING 1
"""
_INSERT_LOG = """
INSERT INTO decision_log (at, event_id, user_id, rule, step, key, outcome, reason, due_at,
    detail)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
# The state lists below spell out DELIVERED_STATES and FINISHED_STATES of ledger.base.
_LAST_DELIVERED = """
SELECT max(claimed_at) FROM sends
WHERE rule_id = %s AND user_id = %s AND state IN ('sending', 'sent', 'in_doubt')
"""
_DELIVERED_COUNT = """
SELECT count(*) FROM sends
WHERE user_id = %s AND claimed_at >= %s AND state IN ('sending', 'sent', 'in_doubt')
    AND categories && %s::text[]
"""
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
_RECOVER = """
UPDATE sends SET
    state = CASE on_doubt WHEN 'resend' THEN 'scheduled' ELSE 'in_doubt' END,
    claimed_at = CASE on_doubt WHEN 'resend' THEN NULL ELSE claimed_at END,
    lease_until = NULL, last_error = %(error)s, updated_at = %(at)s
WHERE state = 'sending'
    AND (lease_owner = %(owner)s OR lease_until IS NULL OR lease_until <= %(at)s)
RETURNING *
"""
# Why an expired lease's send is in doubt: its worker died between claiming and recording.
LEASE_EXPIRED_ERROR = "the worker sending it stopped answering (lease expired)"
_EXPIRE = """
UPDATE sends SET
    state = CASE on_doubt WHEN 'resend' THEN 'scheduled' ELSE 'in_doubt' END,
    claimed_at = CASE on_doubt WHEN 'resend' THEN NULL ELSE claimed_at END,
    lease_until = NULL, last_error = %(error)s, updated_at = %(at)s
WHERE state = 'sending' AND lease_until <= %(at)s
RETURNING *
"""
_RESOLVE = """
UPDATE sends SET
    state = CASE WHEN %(sent)s THEN 'sent' ELSE 'scheduled' END,
    due_at = CASE WHEN %(sent)s THEN due_at ELSE %(at)s END,
    claimed_at = CASE WHEN %(sent)s THEN claimed_at ELSE NULL END,
    lease_until = NULL, last_error = %(note)s, updated_at = %(at)s
WHERE key = %(key)s AND state = 'in_doubt'
RETURNING *
"""
_PRUNE = (
    """
    DELETE FROM sends
    WHERE updated_at < %s AND state IN ('sent', 'failed', 'cancelled', 'in_doubt')
    """,
    "DELETE FROM seen_events WHERE seen_at < %s",
    "DELETE FROM decision_log WHERE at < %s",
    "DELETE FROM dead_letters WHERE at < %s",
    "DELETE FROM cancel_marks WHERE at < %s",
)


def _in_order(records: list[SendRecord], keys: Sequence[str]) -> list[SendRecord]:
    """Return ``records`` in the order of ``keys``, as the one-by-one ledgers return them."""
    rank = {key: index for index, key in enumerate(keys)}
    return sorted(records, key=lambda record: rank[record.key])


class PostgresTxn:
    """One transaction of a PostgreSQL ledger; see :class:`trigmail.ledger.base.LedgerTxn`."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        clock: Clock,
        errors: ErrorScrubber,
        worker_id: str,
        lease: timedelta,
    ) -> None:
        self._conn = conn
        self._rows = conn.cursor(row_factory=dict_row)
        self._tuples = conn.cursor()
        self._locks = conn.cursor()
        self._clock = clock
        self._errors = errors
        self._worker_id = worker_id
        self._lease = lease
        self._locked_users: set[str] = set()
        self._open = True

    def _check_open(self) -> None:
        if not self._open:
            raise LedgerError("the transaction is over: open a new one")

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Execute a statement; return its row count."""
        self._check_open()
        with self._errors.guard():
            return self._tuples.execute(sql, params).rowcount

    def _scalar(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        self._check_open()
        with self._errors.guard():
            row = self._tuples.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _dicts(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        self._check_open()
        with self._errors.guard():
            return self._rows.execute(sql, params).fetchall()

    def _sends(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[SendRecord]:
        return [ROWS.send(row) for row in self._dicts(sql, params)]

    @contextmanager
    def _as_user(self, user_id: str) -> Iterator[None]:
        """Run the block's statements after taking ``user_id``'s lock (see the module).

        The lock and the block's statements travel in one pipeline: one round trip, yet still
        separate statements, so the block's snapshot is taken once the lock is held.
        """
        if user_id in self._locked_users:
            yield
            return
        self._check_open()
        with self._errors.guard(), self._conn.pipeline():
            self._locks.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_USER, user_id)
            )
            yield
        self._locked_users.add(user_id)

    def lock_users(self, user_ids: Collection[str]) -> None:
        wanted = sorted(set(user_ids) - self._locked_users)
        if not wanted:
            return
        self._check_open()
        # The subquery's order is the order the outer select takes the locks in: by lock key,
        # the same in every worker, so two batches sharing users queue instead of deadlocking.
        with self._errors.guard():
            self._locks.execute(
                "SELECT pg_advisory_xact_lock(%s, key) FROM"
                " (SELECT DISTINCT hashtext(user_id) AS key"
                " FROM unnest(%s::text[]) AS user_id ORDER BY key) AS ordered",
                (LOCK_USER, wanted),
            )
        self._locked_users.update(wanted)

    # -- reads the engine decides from -------------------------------------------------
    def seen_event(self, event_id: str) -> bool:
        return bool(self._scalar("SELECT 1 FROM seen_events WHERE event_id = %s", (event_id,)))

    def send_exists(self, key: str) -> bool:
        return bool(self._scalar("SELECT 1 FROM sends WHERE key = %s", (key,)))

    def last_delivered_at(self, rule_id: str, user_id: str) -> datetime | None:
        with self._as_user(user_id):
            return ROWS.maybe_time(self._scalar(_LAST_DELIVERED, (rule_id, user_id)))

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        with self._as_user(user_id):
            return self._sends(
                "SELECT * FROM sends WHERE user_id = %s AND state = 'scheduled'"
                " AND rule_id = ANY(%s) ORDER BY due_at, key",
                (user_id, sorted(rule_ids)),
            )

    def delivered_count_since(
        self, user_id: str, categories: Collection[str], since: datetime
    ) -> int:
        with self._as_user(user_id):
            count: int = self._scalar(
                _DELIVERED_COUNT, (user_id, as_utc(since), sorted(categories))
            )
        return count

    # -- writes of the event path --------------------------------------------------------
    def cancel_marks_after(self, user_id: str, order: str) -> list[CancelMark]:
        rows = self._dicts(
            "SELECT user_id, ord, event, event_id, vals, at FROM cancel_marks"
            " WHERE user_id = %s AND ord > %s ORDER BY ord",
            (user_id, order),
        )
        return [
            CancelMark(
                row["user_id"],
                row["ord"],
                row["event"],
                row["event_id"],
                json.loads(row["vals"]),
                row["at"],
            )
            for row in rows
        ]

    def add_cancel_mark(self, mark: CancelMark) -> None:
        self._run(
            "INSERT INTO cancel_marks (user_id, ord, event, event_id, vals, at)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (user_id, ord) DO NOTHING",
            (
                mark.user_id,
                mark.order,
                mark.event,
                mark.event_id,
                json.dumps(mark.values, separators=(",", ":")),
                as_utc(mark.at),
            ),
        )

    def mark_seen(self, event_id: str, at: datetime) -> bool:
        inserted = self._run(
            "INSERT INTO seen_events (event_id, seen_at) VALUES (%s, %s)"
            " ON CONFLICT (event_id) DO NOTHING",
            (event_id, as_utc(at)),
        )
        return inserted == 1

    def insert_send(self, send: SendRecord) -> bool:
        if send.state != SendState.SCHEDULED:
            raise ValueError(f"send {send.key}: a new send is scheduled, not {send.state}")
        created_at = self._clock() if send.created_at is None else send.created_at
        params = send_params(send, created_at)
        # A cancellation deciding for this user in another worker must see this send.
        with self._as_user(send.user_id):
            return self._scalar(_INSERT_SEND, params) is not None

    def cancel_sends(self, keys: Collection[str], reason: str, at: datetime) -> list[str]:
        wanted = list(dict.fromkeys(keys))
        moved = self._dicts(
            "UPDATE sends SET state = 'cancelled', reason = %s, updated_at = %s"
            " WHERE key = ANY(%s) AND state = 'scheduled' RETURNING key",
            (reason, as_utc(at), wanted),
        )
        cancelled = {row["key"] for row in moved}
        return [key for key in wanted if key in cancelled]

    def log(self, entries: Sequence[LogEntry]) -> None:
        self._check_open()
        with self._errors.guard():
            self._tuples.executemany(_INSERT_LOG, [log_params(entry) for entry in entries])

    def add_dead_letter(self, letter: DeadLetter) -> None:
        self._run(
            "INSERT INTO dead_letters (at, source, position, raw, reason, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            dead_params(letter),
        )

    def get_position(self, source: str) -> str | None:
        position: str | None = self._scalar(
            "SELECT position FROM positions WHERE source = %s", (source,)
        )
        return position

    def set_position(self, source: str, position: str) -> None:
        self._run(
            "INSERT INTO positions (source, position, updated_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (source) DO UPDATE"
            " SET position = excluded.position, updated_at = excluded.updated_at",
            (source, position, as_utc(self._clock())),
        )

    # -- writes of the send path -----------------------------------------------------------
    def due_sends(self, until: datetime, limit: int) -> list[SendRecord]:
        return self._sends(
            "SELECT * FROM sends WHERE state = 'scheduled' AND due_at <= %s"
            " ORDER BY due_at, key LIMIT %s",
            (as_utc(until), max(limit, 0)),
        )

    def next_due_at(self) -> datetime | None:
        return ROWS.maybe_time(
            self._scalar("SELECT min(due_at) FROM sends WHERE state = 'scheduled'")
        )

    def claim(self, keys: Collection[str], at: datetime) -> list[SendRecord]:
        at = as_utc(at)
        wanted = list(dict.fromkeys(keys))
        params = {"at": at, "owner": self._worker_id, "until": at + self._lease, "keys": wanted}
        return _in_order(self._sends(_CLAIM, params), wanted)

    def finish(
        self,
        keys: Collection[str],
        state: SendState,
        at: datetime,
        message_id: str | None = None,
        error: str | None = None,
    ) -> None:
        check_finish_state(state)
        self._run(
            "UPDATE sends SET state = %s, updated_at = %s,"
            " message_id = COALESCE(%s, message_id), last_error = COALESCE(%s, last_error)"
            " WHERE key = ANY(%s) AND state = 'sending'",
            (state.value, as_utc(at), message_id, error, list(keys)),
        )

    def retry_later(self, keys: Collection[str], due_at: datetime, error: str) -> None:
        self._run(
            "UPDATE sends SET state = 'scheduled', due_at = %s, last_error = %s,"
            " claimed_at = NULL, lease_owner = NULL, lease_until = NULL, updated_at = %s"
            " WHERE key = ANY(%s) AND state = 'sending'",
            (as_utc(due_at), error, as_utc(self._clock()), list(keys)),
        )

    def drop(self, key: str, reason: str, at: datetime) -> bool:
        moved = self._run(
            "UPDATE sends SET state = 'cancelled', reason = %s, updated_at = %s"
            " WHERE key = %s AND state = 'scheduled'",
            (reason, as_utc(at), key),
        )
        return moved == 1

    def defer(self, key: str, due_at: datetime) -> bool:
        moved = self._run(
            "UPDATE sends SET due_at = %s, updated_at = %s WHERE key = %s AND state = 'scheduled'",
            (as_utc(due_at), as_utc(self._clock()), key),
        )
        return moved == 1

    def expire_leases(self, at: datetime) -> list[SendRecord]:
        params = {"error": LEASE_EXPIRED_ERROR, "at": as_utc(at)}
        return sorted(self._sends(_EXPIRE, params), key=lambda record: record.key)

    def recover_in_flight(self, at: datetime) -> list[SendRecord]:
        params = {"error": RECOVERED_ERROR, "at": as_utc(at), "owner": self._worker_id}
        return sorted(self._sends(_RECOVER, params), key=lambda record: record.key)

    def resolve(self, key: str, sent: bool, at: datetime) -> SendRecord | None:
        # FOR UPDATE: the note must be built from the error the update then overwrites.
        previous = self._scalar(
            "SELECT last_error FROM sends WHERE key = %s AND state = 'in_doubt' FOR UPDATE",
            (key,),
        )
        note = resolution_note(sent, previous)
        params = {"sent": sent, "at": as_utc(at), "note": note, "key": key}
        found = self._sends(_RESOLVE, params)
        return found[0] if found else None

    def set_meta(self, name: str, value: str) -> None:
        self._run(
            "INSERT INTO meta (name, value) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    # -- reads of the ledger itself (status, tools) ------------------------------------------
    def get_send(self, key: str) -> SendRecord | None:
        found = self._sends("SELECT * FROM sends WHERE key = %s", (key,))
        return found[0] if found else None

    def get_meta(self, name: str) -> str | None:
        value: str | None = self._scalar("SELECT value FROM meta WHERE name = %s", (name,))
        return value

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        rows = self._dicts("SELECT * FROM dead_letters ORDER BY id DESC LIMIT %s", (max(limit, 0),))
        return [ROWS.dead(row) for row in rows]

    def decision_log(self, event_id: str | None, limit: int) -> list[LogEntry]:
        rows = self._dicts(
            "SELECT * FROM decision_log WHERE %(event)s::text IS NULL OR event_id = %(event)s"
            " ORDER BY id DESC LIMIT %(limit)s",
            {"event": event_id, "limit": max(limit, 0)},
        )
        return [ROWS.log(row) for row in rows]

    def _latest(self, state: SendState | None, limit: int) -> list[SendRecord]:
        return self._sends(
            "SELECT * FROM sends WHERE %(state)s::text IS NULL OR state = %(state)s"
            " ORDER BY updated_at DESC, key LIMIT %(limit)s",
            {"state": None if state is None else state.value, "limit": max(limit, 0)},
        )

    def status(self, limit: int) -> LedgerStatus:
        counts = dict.fromkeys(SendState, 0)
        by_rule: dict[str, dict[SendState, int]] = {}
        grouped = "SELECT rule_id, state, count(*) FROM sends GROUP BY rule_id, state"
        for row in self._dicts(grouped):
            state = SendState(row["state"])
            counts[state] += row["count"]
            by_rule.setdefault(row["rule_id"], dict.fromkeys(SendState, 0))[state] = row["count"]
        return LedgerStatus(
            counts=counts,
            by_rule=by_rule,
            next_due=self._sends(
                "SELECT * FROM sends WHERE state = 'scheduled' ORDER BY due_at, key LIMIT %s",
                (max(limit, 0),),
            ),
            in_doubt=self._latest(SendState.IN_DOUBT, limit),
            failed=self._latest(SendState.FAILED, limit),
            recent=self._latest(None, limit),
            dead_letters=self._scalar("SELECT count(*) FROM dead_letters"),
            rules_version=self.get_meta("rules_version"),
        )

    def prune(self, before: datetime) -> int:
        cutoff = (as_utc(before),)
        return sum(self._run(sql, cutoff) for sql in _PRUNE)

    def close(self) -> None:
        self._open = False
