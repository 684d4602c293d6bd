"""The SQL ledgers' delivery evidence: webhook events and what they settle (docs/webhook.md).

Kept apart from :mod:`trigmail.ledger.sql.txn` so that the send path's statements stay in one
place; :class:`EvidenceTxn` is mixed into :class:`~trigmail.ledger.sql.txn.SqlTxn` and uses its
ways to run a statement.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any, ClassVar

from trigmail.evidence import (
    DeliveryEvent,
    DeliveryEventType,
    EvidenceState,
    resent_for_verify,
    settled_by_evidence,
)
from trigmail.ledger.migrations import UNSCHEDULED
from trigmail.ledger.rows import Row
from trigmail.ledger.semantics import as_utc
from trigmail.ledger.sql.dialect import Dialect
from trigmail.sends import SendRecord, SendState

# The same as trigmail.ledger.sql.txn.Params (which imports this module).
Params = Sequence[Any] | Mapping[str, Any]

_EVENT_COLUMNS = "sg_event_id, key, rule_id, event, at, message_id, detail, received_at"


class EvidenceStatements:
    """The statements of :class:`EvidenceTxn`, in one dialect."""

    def __init__(self, d: Dialect) -> None:
        def sql(text: str) -> str:
            return text.replace("?", d.placeholder)

        keys = d.in_list.format(column="key")
        ids = d.in_list.format(column="sg_event_id")
        self.stored_ids = sql(f"SELECT sg_event_id FROM delivery_events WHERE {ids}")
        self.add_event = sql(
            f"INSERT INTO delivery_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (sg_event_id) DO NOTHING"
        )
        # A database that takes a list as one parameter (an array: PostgreSQL's ``= ANY(?)``)
        # inserts a whole batch in one statement of eight arrays, and says which rows it took.
        self.arrays = "ANY(" in d.in_list
        self.add_events_arrays = sql(
            f"INSERT INTO delivery_events ({_EVENT_COLUMNS}) SELECT * FROM unnest("
            "?::text[], ?::text[], ?::text[], ?::text[], ?::timestamptz[], ?::text[], ?::text[],"
            " ?::timestamptz[]) ON CONFLICT (sg_event_id) DO NOTHING RETURNING sg_event_id"
        )
        # EXISTS finds a send's events by the key index; IN (SELECT key ...) read them all. The
        # in-doubt reads name the predicate of SQLite's partial index of such sends (v11).
        evidenced = "EXISTS (SELECT 1 FROM delivery_events AS e WHERE e.key = sends.key)"
        self.in_doubt_evidenced = sql(
            f"SELECT * FROM sends WHERE state = 'in_doubt' AND {UNSCHEDULED} AND {evidenced}"
            f" ORDER BY key LIMIT ?{d.for_update}"
        )
        self.in_doubt_evidenced_of = sql(
            f"SELECT * FROM sends WHERE state = 'in_doubt' AND {UNSCHEDULED} AND {keys}"
            f" AND {evidenced} ORDER BY key{d.for_update}"
        )
        self.events_of = sql("SELECT * FROM delivery_events WHERE key = ? ORDER BY at, sg_event_id")
        self.events_of_keys = sql(
            f"SELECT * FROM delivery_events WHERE {keys} ORDER BY key, at, sg_event_id"
        )
        self.settle_sent = sql(
            "UPDATE sends SET state = 'sent', message_id = ?, reason = ?, updated_at = ?"
            f"{d.end_lease} WHERE key = ? AND state = 'in_doubt'"
        )
        self.settle_sent_arrays = sql(
            "UPDATE sends SET state = 'sent', message_id = u.message_id, reason = u.reason,"
            f" updated_at = ?{d.end_lease} FROM unnest(?::text[], ?::text[], ?::text[])"
            " AS u(key, message_id, reason) WHERE sends.key = u.key AND sends.state = 'in_doubt'"
        )
        self.unverified = sql(
            f"SELECT * FROM sends WHERE state = 'in_doubt' AND {UNSCHEDULED}"
            f" AND on_doubt = 'verify' AND updated_at <= ? AND NOT {evidenced}"
            " AND NOT EXISTS (SELECT 1 FROM doubt_resends AS r WHERE r.key = sends.key)"
            f" ORDER BY updated_at, key LIMIT ?{d.for_update}"
        )
        self.mark_resent = sql(
            "INSERT INTO doubt_resends (key, at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
        )
        self.resent = sql(f"SELECT key FROM doubt_resends WHERE {keys}")
        # The evidence state of each in-doubt send, as trigmail.webhook.report decides it.
        self.doubt_states = (
            "SELECT CASE"
            f" WHEN {evidenced} THEN '{EvidenceState.EVIDENCE_RECEIVED.value}'"
            f" WHEN on_doubt <> 'verify' THEN '{EvidenceState.AWAITING_EVIDENCE.value}'"
            " WHEN EXISTS (SELECT 1 FROM doubt_resends AS r WHERE r.key = sends.key)"
            f" THEN '{EvidenceState.RESENT_NO_EVIDENCE.value}'"
            f" ELSE '{EvidenceState.AWAITING_VERIFY.value}' END AS evidence, COUNT(*) AS n"
            f" FROM sends WHERE state = 'in_doubt' AND {UNSCHEDULED} GROUP BY 1"
        )
        self.counts = (
            "SELECT rule_id, event, COUNT(*) AS n FROM delivery_events GROUP BY rule_id, event"
        )
        self.prune = tuple(
            sql(text)
            for text in (
                "DELETE FROM delivery_events WHERE received_at < ?",
                "DELETE FROM doubt_resends WHERE at < ?",
            )
        )


@cache
def statements(dialect: Dialect) -> EvidenceStatements:
    """Return the evidence statements of ``dialect``, built once."""
    return EvidenceStatements(dialect)


class EvidenceTxn:
    """Evidence reads and writes of one SQL transaction (see ``LedgerTxn``)."""

    dialect: ClassVar[Dialect]

    # Provided by SqlTxn.
    def _run(self, sql: str, params: Params = ()) -> int:
        raise NotImplementedError

    def _rows(self, sql: str, params: Params = ()) -> list[Row]:
        raise NotImplementedError

    def _sends(self, sql: str, params: Params = ()) -> list[SendRecord]:
        raise NotImplementedError

    def _many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _settle(self, records: Sequence[SendRecord], was: SendState) -> None:
        raise NotImplementedError

    @property
    def _esql(self) -> EvidenceStatements:
        return statements(self.dialect)

    def add_delivery_events(self, events: Sequence[DeliveryEvent]) -> list[DeliveryEvent]:
        d = self.dialect
        # The first of each sg_event_id: a statement cannot insert one row twice.
        firsts: dict[str, DeliveryEvent] = {}
        for event in events:
            firsts.setdefault(event.sg_event_id, event)
        unique = list(firsts.values())
        if not unique:
            return []
        if self._esql.arrays:
            return self._add_as_arrays(unique)
        # Which are new is read first, then all are inserted in one executemany: SQLite runs
        # one writing transaction at a time, so what the read found still holds.
        ids = d.keys([event.sg_event_id for event in unique])
        stored = {row["sg_event_id"] for row in self._rows(self._esql.stored_ids, (ids,))}
        new = [event for event in unique if event.sg_event_id not in stored]
        params = [
            (
                event.sg_event_id,
                event.key,
                event.rule_id,
                event.event.value,
                d.time(event.at),
                event.message_id,
                d.text(event.detail),
                d.time(event.received_at),
            )
            for event in new
        ]
        if params:
            self._many(self._esql.add_event, params)
        return new

    def _add_as_arrays(self, unique: list[DeliveryEvent]) -> list[DeliveryEvent]:
        d = self.dialect
        columns = (
            [e.sg_event_id for e in unique],
            [e.key for e in unique],
            [e.rule_id for e in unique],
            [e.event.value for e in unique],
            [d.time(e.at) for e in unique],
            [e.message_id for e in unique],
            [d.text(e.detail) for e in unique],
            [d.time(e.received_at) for e in unique],
        )
        rows = self._rows(self._esql.add_events_arrays, columns)
        inserted = {row["sg_event_id"] for row in rows}
        return [event for event in unique if event.sg_event_id in inserted]

    def settle_by_evidence(
        self, at: datetime, keys: Collection[str] | None = None, limit: int = 1000
    ) -> list[SendRecord]:
        if keys is None:
            found = self._sends(self._esql.in_doubt_evidenced, (max(limit, 0),))
        else:
            wanted = sorted(set(keys))
            if not wanted:
                return []
            found = self._sends(self._esql.in_doubt_evidenced_of, (self.dialect.keys(wanted),))
        if not found:
            return []
        at = as_utc(at)
        rows = self._rows(self._esql.events_of_keys, (self.dialect.keys([s.key for s in found]),))
        firsts: dict[str, DeliveryEvent] = {}
        for row in rows:
            firsts.setdefault(row["key"], self._event(row))  # ordered: the first is the earliest
        settled = [settled_by_evidence(send, firsts[send.key], at) for send in found]
        time = self.dialect.time(at)
        if self._esql.arrays:
            keys = [done.key for done in settled]
            message_ids = [done.message_id for done in settled]
            reasons = [done.reason for done in settled]
            self._run(self._esql.settle_sent_arrays, (time, keys, message_ids, reasons))
        else:
            self._many(
                self._esql.settle_sent,
                [(done.message_id, done.reason, time, done.key) for done in settled],
            )
        return settled

    def resend_unverified(
        self, in_doubt_before: datetime, at: datetime, limit: int = 1000
    ) -> list[SendRecord]:
        d = self.dialect
        found = self._sends(self._esql.unverified, (d.time(in_doubt_before), max(limit, 0)))
        at = as_utc(at)
        again = [resent_for_verify(send, at) for send in found]
        self._settle(again, SendState.IN_DOUBT)
        for send in again:
            self._run(self._esql.mark_resent, (send.key, d.time(at)))
        return again

    def delivery_events(self, key: str) -> list[DeliveryEvent]:
        return [self._event(row) for row in self._rows(self._esql.events_of, (key,))]

    def doubt_resent(self, keys: Collection[str]) -> set[str]:
        wanted = sorted(set(keys))
        if not wanted:
            return set()
        return {row["key"] for row in self._rows(self._esql.resent, (self.dialect.keys(wanted),))}

    def in_doubt_by_evidence(self) -> dict[EvidenceState, int]:
        counts = dict.fromkeys(EvidenceState, 0)
        for row in self._rows(self._esql.doubt_states):
            counts[EvidenceState(row["evidence"])] = int(row["n"])
        return counts

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for row in self._rows(self._esql.counts):
            counts.setdefault(row["rule_id"], {})[row["event"]] = int(row["n"])
        return counts

    def prune_evidence(self, before: datetime) -> int:
        cutoff = (self.dialect.time(before),)
        return sum(self._run(sql, cutoff) for sql in self._esql.prune)

    def _event(self, row: Row) -> DeliveryEvent:
        time = self.dialect.rows.time
        return DeliveryEvent(
            sg_event_id=row["sg_event_id"],
            key=row["key"],
            rule_id=row["rule_id"],
            event=DeliveryEventType(row["event"]),
            at=time(row["at"]),
            message_id=row["message_id"],
            detail=row["detail"],
            received_at=time(row["received_at"]),
        )
