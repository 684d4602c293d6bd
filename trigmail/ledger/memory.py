"""The in-memory ledger: the SQLite ledger's semantics with dicts, for ``simulate`` and tests.

A transaction writes in place and keeps an undo log, so commit is free and a rollback replays
the log backwards. Sends are indexed per user and per (rule, user) so nothing on the event path
scans every send. Due sends are found by a scan: only a scheduler refill asks for them, and
keeping a due-time heap up to date on every write cost ``simulate`` more than the scans.

The data and its indexes are :mod:`trigmail.ledger.mem_store`; the transaction's delivery
evidence is :mod:`trigmail.ledger.mem_evidence`.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast

from trigmail.decisions import LogEntry
from trigmail.errors import LedgerError
from trigmail.evidence import DeliveryEvent, EvidenceState
from trigmail.ledger.base import CancelMark, DeadLetter, LedgerStatus
from trigmail.ledger.mem_evidence import MemoryEvidenceTxn
from trigmail.ledger.mem_store import MemoryStore, UndoLog
from trigmail.ledger.semantics import (
    Clock,
    as_utc,
    due_order,
    recovered,
    resolved,
    status_of,
    utc_now,
)
from trigmail.sends import (
    DELIVERED_STATES,
    SendRecord,
    SendState,
    cancelled,
    check_finish_state,
    check_new,
    claimed,
    evolve,
    finished,
    retried,
)


def _in_stored_form(send: SendRecord) -> bool:
    # The pipeline's new sends already have both times, all in UTC: storing them as they are
    # spares a copy of every send.
    return (
        send.due_at.tzinfo is UTC
        and send.created_at is not None
        and send.created_at.tzinfo is UTC
        and send.updated_at is not None
        and send.updated_at.tzinfo is UTC
    )


class _Ended:
    """Stands in for the store once a transaction is over: any use of it is refused."""

    def __getattr__(self, name: str) -> Any:
        raise LedgerError("the transaction is over: open a new one")


# Typed as a store so that the hot paths read ``self._store`` without a check of their own.
_ENDED = cast(MemoryStore, _Ended())


class MemoryTxn(MemoryEvidenceTxn):
    """One transaction of a :class:`MemoryLedger`; see :class:`trigmail.ledger.base.LedgerTxn`.

    It is its own context manager (``with ledger.transaction() as txn``): committed on normal
    exit, rolled back on any exception. Writes happen in place, each logging how to undo it.
    """

    def __init__(self, ledger: MemoryLedger, clock: Clock) -> None:
        self._ledger = ledger
        self._clock = clock
        self._store = _ENDED
        self._undo: UndoLog = []

    def __enter__(self) -> MemoryTxn:
        self._store = self._ledger._begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._store = _ENDED
        try:
            if exc_type is not None:
                for undo, args in reversed(self._undo):
                    undo(*args)
        finally:
            self._undo.clear()
            self._ledger._release()

    def _put(self, record: SendRecord) -> None:
        store = self._store
        old = store.put(record)
        self._undo.append((store.restore, (record.key, old)))

    # -- reads the engine decides from -------------------------------------------------
    def seen_event(self, event_id: str) -> bool:
        return event_id in self._store.seen

    def send_exists(self, key: str) -> bool:
        return key in self._store.sends

    def last_delivered_at(self, rule_id: str, user_id: str) -> datetime | None:
        store = self._store
        claimed = [
            record.claimed_at
            for key in store.by_rule_user.get((rule_id, user_id), ())
            if (record := store.sends[key]).state in DELIVERED_STATES
            and record.claimed_at is not None
        ]
        return max(claimed, default=None)

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        return self._user_sends(user_id, rule_ids, SendState.SCHEDULED)

    def _user_sends(
        self, user_id: str, rule_ids: Collection[str], state: SendState
    ) -> list[SendRecord]:
        """``user_id``'s sends of these rules in ``state``, soonest due first."""
        wanted = frozenset(rule_ids)
        found = [
            record
            for record in self._store.user_sends(user_id)
            if record.state == state and record.rule_id in wanted
        ]
        return sorted(found, key=due_order)

    def delivered_count_since(
        self, user_id: str, categories: Collection[str], since: datetime
    ) -> int:
        wanted = frozenset(categories)
        since = as_utc(since)
        delivered = [
            record
            for record in self._store.user_sends(user_id)
            if record.state in DELIVERED_STATES
            and record.claimed_at is not None
            and record.claimed_at >= since
            and not wanted.isdisjoint(record.payload.categories)
        ]
        return len(delivered)

    def lock_users(self, user_ids: Collection[str]) -> None:
        pass  # transactions are serialised whole: no lock per user

    def cancel_marks_after(self, user_id: str, order: str) -> list[CancelMark]:
        marks = self._store.marks.get(user_id, {})
        return [marks[each] for each in sorted(marks) if each > order]

    # -- writes of the event path --------------------------------------------------------
    def add_cancel_mark(self, mark: CancelMark) -> None:
        marks = self._store.marks.setdefault(mark.user_id, {})
        if mark.order not in marks:
            marks[mark.order] = mark
            self._undo.append((marks.pop, (mark.order,)))

    def mark_seen(self, event_id: str, at: datetime) -> bool:
        seen = self._store.seen
        if event_id in seen:
            return False
        seen[event_id] = as_utc(at)
        self._undo.append((seen.pop, (event_id,)))
        return True

    def expect_seen(self, event_ids: Collection[str], at: datetime) -> None:
        pass  # a dict lookup per id already

    def expect_sends(self, keys: Iterable[str]) -> None:
        pass  # likewise

    def expect_claims(self, keys: Iterable[str]) -> None:
        pass  # likewise

    def expect_reads(self, pending: Collection[str], delivered: Collection[str]) -> None:
        pass  # an index of each user's sends already

    def insert_send(self, send: SendRecord) -> bool:
        check_new(send)
        if send.key in self._store.sends:
            return False
        if not _in_stored_form(send):
            created_at = self._clock() if send.created_at is None else send.created_at
            send = evolve(
                send,
                due_at=as_utc(send.due_at),
                created_at=as_utc(created_at),
                updated_at=as_utc(send.updated_at or created_at),
            )
        self._put(send)
        return True

    def cancel_sends(self, keys: Collection[str], reason: str, at: datetime) -> list[str]:
        return [key for key in dict.fromkeys(keys) if self.drop(key, reason, at)]

    def log(self, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        log = self._store.log
        size = len(log)
        log.extend(entries)
        self._undo.append((log.__delitem__, (slice(size, None),)))

    def add_dead_letter(self, letter: DeadLetter) -> None:
        dead = self._store.dead
        dead.append(replace(letter, at=as_utc(letter.at)))
        self._undo.append((dead.pop, ()))

    def get_position(self, source: str) -> str | None:
        return self._store.positions.get(source)

    def set_position(self, source: str, position: str) -> None:
        self._set_item(self._store.positions, source, position)

    def _set_item(self, mapping: dict[str, str], name: str, value: str) -> None:
        old = mapping.get(name)
        mapping[name] = value
        if old is None:
            self._undo.append((mapping.pop, (name,)))
        else:
            self._undo.append((mapping.__setitem__, (name, old)))

    # -- writes of the send path -----------------------------------------------------------
    def due_sends(self, until: datetime, limit: int) -> list[SendRecord]:
        until = as_utc(until)
        due = (
            record
            for record in self._store.sends.values()
            if record.state == SendState.SCHEDULED and record.due_at <= until
        )
        return heapq.nsmallest(limit, due, key=due_order)

    def next_due_at(self) -> datetime | None:
        scheduled = (
            record.due_at
            for record in self._store.sends.values()
            if record.state == SendState.SCHEDULED
        )
        return min(scheduled, default=None)

    def claim(self, keys: Collection[str], at: datetime) -> list[SendRecord]:
        at = as_utc(at)
        moved = [claimed(record, at) for record in self._store.in_state(keys, SendState.SCHEDULED)]
        for record in moved:
            self._put(record)
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
        for record in self._store.in_state(keys, SendState.SENDING):
            self._put(finished(record, state, as_utc(at), message_id, error))

    def retry_later(self, keys: Collection[str], due_at: datetime, error: str) -> None:
        now = as_utc(self._clock())
        for record in self._store.in_state(keys, SendState.SENDING):
            self._put(retried(record, as_utc(due_at), error, now))

    def drop(self, key: str, reason: str, at: datetime) -> bool:
        for record in self._store.in_state((key,), SendState.SCHEDULED):
            self._put(cancelled(record, reason, as_utc(at)))
            return True
        return False

    def defer(self, key: str, due_at: datetime) -> bool:
        for record in self._store.in_state((key,), SendState.SCHEDULED):
            self._put(evolve(record, due_at=as_utc(due_at), updated_at=as_utc(self._clock())))
            return True
        return False

    def cancelled_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        return self._user_sends(user_id, rule_ids, SendState.CANCELLED)

    def restore(self, key: str, at: datetime) -> SendRecord | None:
        for record in self._store.in_state((key,), SendState.CANCELLED):
            restored = evolve(record, state=SendState.SCHEDULED, reason=None, updated_at=as_utc(at))
            self._put(restored)
            return restored
        return None

    def move_cancel_mark(self, user_id: str, event_id: str, order: str) -> None:
        marks = self._store.marks.get(user_id, {})
        for old in [each for each, mark in marks.items() if mark.event_id == event_id]:
            if old > order:
                mark = marks.pop(old)
                self._undo.append((marks.__setitem__, (old, mark)))
                self.add_cancel_mark(replace(mark, order=order))

    def rematch(self, key: str, cancel_match: Mapping[str, Any]) -> bool:
        for record in self._store.in_state((key,), SendState.SCHEDULED):
            self._put(evolve(record, cancel_match=dict(cancel_match)))
            return True
        return False

    def expire_leases(self, at: datetime) -> list[SendRecord]:
        return []  # one process, no leases: its own sends are settled at its start

    def recover_in_flight(self, at: datetime) -> list[SendRecord]:
        at = as_utc(at)
        sending = [r for r in self._store.sends.values() if r.state == SendState.SENDING]
        changed = [recovered(record, at) for record in sorted(sending, key=lambda r: r.key)]
        for record in changed:
            self._put(record)
        return changed

    def resolve(self, key: str, sent: bool, at: datetime) -> SendRecord | None:
        for record in self._store.in_state((key,), SendState.IN_DOUBT):
            settled = resolved(record, sent, as_utc(at))
            self._put(settled)
            return settled
        return None

    def set_meta(self, name: str, value: str) -> None:
        self._set_item(self._store.meta, name, value)

    def get_meta(self, name: str) -> str | None:
        return self._store.meta.get(name)


class MemoryLedger:
    """A ledger that lives and dies with the process; see :class:`trigmail.ledger.base.Ledger`.

    Args:
        clock: the time of writes that carry none (``created_at`` of a new send); ``simulate``
            passes its virtual clock.
        shared: whether several pipelines write to it at once, as several workers share a
            PostgreSQL ledger (tests of that case use it so).
    """

    def __init__(self, clock: Clock = utc_now, *, shared: bool = False) -> None:
        self.shared = shared
        self._clock = clock
        self._store = MemoryStore()
        self._lock = threading.RLock()
        self._busy = False
        self._closed = False

    def transaction(self) -> MemoryTxn:
        # A class rather than @contextmanager: simulate opens several transactions per event.
        return MemoryTxn(self, self._clock)

    def _begin(self) -> MemoryStore:
        self._lock.acquire()
        try:
            self._check_usable()
        except BaseException:
            self._lock.release()
            raise
        self._busy = True
        return self._store

    def _release(self) -> None:
        self._busy = False
        self._lock.release()

    def _check_usable(self) -> None:
        if self._closed:
            raise LedgerError("the ledger is closed")
        if self._busy:
            raise LedgerError("a transaction is already open on this ledger")

    @contextmanager
    def _reading(self) -> Iterator[MemoryStore]:
        with self._lock:
            self._check_usable()
            yield self._store

    def status(self, limit: int = 10) -> LedgerStatus:
        with self._reading() as store:
            version = store.meta.get("rules_version")
            return status_of(list(store.sends.values()), len(store.dead), version, limit)

    def count_sends(self, states: Collection[SendState]) -> dict[SendState, int]:
        with self._reading() as store:
            found = Counter(send.state for send in store.sends.values())
            return {state: found[state] for state in states}

    def get_send(self, key: str) -> SendRecord | None:
        with self._reading() as store:
            return store.sends.get(key)

    def get_meta(self, name: str) -> str | None:
        with self._reading() as store:
            return store.meta.get(name)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._reading() as store:
            return store.dead[::-1][:limit]

    def decision_log(self, event_id: str | None = None, limit: int = 100) -> list[LogEntry]:
        with self._reading() as store:
            newest = reversed(store.log)
            found = [e for e in newest if event_id is None or e.event_id == event_id]
            return found[:limit]

    def prune(self, before: datetime) -> int:
        with self._reading() as store:
            return store.prune(as_utc(before))

    def delivery_events(self, key: str) -> list[DeliveryEvent]:
        with self._reading() as store:
            return store.events_of(key)

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        with self._reading() as store:
            return store.delivery_counts()

    def doubt_resent(self, keys: Collection[str]) -> set[str]:
        with self._reading() as store:
            return {key for key in keys if key in store.resent}

    def in_doubt_by_evidence(self) -> dict[EvidenceState, int]:
        with self._reading() as store:
            return store.in_doubt_by_evidence()

    def close(self) -> None:
        with self._lock:
            self._closed = True
