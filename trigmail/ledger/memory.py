"""The in-memory ledger: the SQLite ledger's semantics with dicts, for ``simulate`` and tests.

A transaction writes in place and keeps an undo log, so commit is free and a rollback replays
the log backwards. Sends are indexed per user and per (rule, user) so nothing on the event path
scans every send. Due sends are found by a scan: only a scheduler refill asks for them, and
keeping a due-time heap up to date on every write cost ``simulate`` more than the scans.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast

from trigmail.decisions import LogEntry
from trigmail.errors import LedgerError
from trigmail.evidence import (
    DeliveryEvent,
    EvidenceState,
    first_evidence,
    resent_for_verify,
    settled_by_evidence,
)
from trigmail.ledger.base import CancelMark, DeadLetter, LedgerStatus
from trigmail.ledger.semantics import (
    Clock,
    as_utc,
    due_order,
    recovered,
    resolved,
    status_of,
    utc_now,
)
from trigmail.rules.model import OnDoubt
from trigmail.sends import (
    DELIVERED_STATES,
    FINISHED_STATES,
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


class _Store:
    """The data of a memory ledger and its indexes."""

    def __init__(self) -> None:
        self.sends: dict[str, SendRecord] = {}
        self.by_user: dict[str, set[str]] = {}
        self.by_rule_user: dict[tuple[str, str], set[str]] = {}
        self.seen: dict[str, datetime] = {}
        self.positions: dict[str, str] = {}
        self.meta: dict[str, str] = {}
        self.log: list[LogEntry] = []
        self.dead: list[DeadLetter] = []
        self.marks: dict[str, dict[str, CancelMark]] = {}  # user id -> order -> mark
        self.events: dict[str, DeliveryEvent] = {}  # sg_event_id -> event
        self.events_by_key: dict[str, list[DeliveryEvent]] = {}
        self.resent: dict[str, datetime] = {}  # key -> when on_doubt: verify sent it again

    def put(self, record: SendRecord) -> SendRecord | None:
        """Store ``record`` and index it; return the record it replaced."""
        old = self.sends.get(record.key)
        self.sends[record.key] = record
        if old is None:
            self.by_user.setdefault(record.user_id, set()).add(record.key)
            self.by_rule_user.setdefault((record.rule_id, record.user_id), set()).add(record.key)
        return old

    def restore(self, key: str, old: SendRecord | None) -> None:
        """Undo a :meth:`put`: bring back ``old``, or forget ``key`` when it was new."""
        if old is not None:
            self.put(old)
            return
        record = self.sends.pop(key)
        self.by_user[record.user_id].discard(key)
        self.by_rule_user[(record.rule_id, record.user_id)].discard(key)

    def forget(self, keys: Iterable[str]) -> None:
        """Delete finished sends for good (prune)."""
        for key in keys:
            self.restore(key, None)

    def prune(self, before: datetime) -> int:
        """Delete what is older than ``before``; return how many rows the SQL ledgers would."""
        old = [
            key
            for key, record in self.sends.items()
            if record.state in FINISHED_STATES and (record.updated_at or before) < before
        ]
        self.forget(old)
        seen = [event_id for event_id, at in self.seen.items() if at < before]
        for event_id in seen:
            del self.seen[event_id]
        removed = len(old) + len(seen) + len(self.log) + len(self.dead)
        self.log = [entry for entry in self.log if as_utc(entry.at) >= before]
        self.dead = [letter for letter in self.dead if letter.at >= before]
        removed -= len(self.log) + len(self.dead)
        for user_id, marks in list(self.marks.items()):
            kept = {order: mark for order, mark in marks.items() if as_utc(mark.at) >= before}
            removed += len(marks) - len(kept)
            self.marks[user_id] = kept
            if not kept:
                del self.marks[user_id]
        return removed + self.prune_evidence(before)

    def prune_evidence(self, before: datetime) -> int:
        old = [e for e in self.events.values() if e.received_at < before]
        for event in old:
            self.drop_event(event)
        resent = [key for key, at in self.resent.items() if at < before]
        for key in resent:
            del self.resent[key]
        return len(old) + len(resent)

    def add_event(self, event: DeliveryEvent) -> None:
        self.events[event.sg_event_id] = event
        self.events_by_key.setdefault(event.key, []).append(event)

    def drop_event(self, event: DeliveryEvent) -> None:
        del self.events[event.sg_event_id]
        of_key = self.events_by_key[event.key]
        of_key.remove(event)
        if not of_key:
            del self.events_by_key[event.key]

    def user_sends(self, user_id: str) -> list[SendRecord]:
        sends = self.sends
        return [sends[key] for key in self.by_user.get(user_id, ())]


def _event_order(event: DeliveryEvent) -> tuple[datetime, str]:
    return event.at, event.sg_event_id


class _Ended:
    """Stands in for the store once a transaction is over: any use of it is refused."""

    def __getattr__(self, name: str) -> Any:
        raise LedgerError("the transaction is over: open a new one")


# Typed as a store so that the hot paths read ``self._store`` without a check of their own.
_ENDED = cast(_Store, _Ended())


class MemoryTxn:
    """One transaction of a :class:`MemoryLedger`; see :class:`trigmail.ledger.base.LedgerTxn`.

    It is its own context manager (``with ledger.transaction() as txn``): committed on normal
    exit, rolled back on any exception. Writes happen in place, each logging how to undo it.
    """

    def __init__(self, ledger: MemoryLedger, clock: Clock) -> None:
        self._ledger = ledger
        self._clock = clock
        self._store = _ENDED
        # (function, arguments) pairs rather than closures: one is logged per write.
        self._undo: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

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
        wanted = frozenset(rule_ids)
        found = [
            record
            for record in self._store.user_sends(user_id)
            if record.state == SendState.SCHEDULED and record.rule_id in wanted
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
        moved = [claimed(record, at) for record in self._in_state(keys, SendState.SCHEDULED)]
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
        for record in self._in_state(keys, SendState.SENDING):
            self._put(finished(record, state, as_utc(at), message_id, error))

    def retry_later(self, keys: Collection[str], due_at: datetime, error: str) -> None:
        now = as_utc(self._clock())
        for record in self._in_state(keys, SendState.SENDING):
            self._put(retried(record, as_utc(due_at), error, now))

    def drop(self, key: str, reason: str, at: datetime) -> bool:
        for record in self._in_state((key,), SendState.SCHEDULED):
            self._put(cancelled(record, reason, as_utc(at)))
            return True
        return False

    def defer(self, key: str, due_at: datetime) -> bool:
        for record in self._in_state((key,), SendState.SCHEDULED):
            self._put(evolve(record, due_at=as_utc(due_at), updated_at=as_utc(self._clock())))
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
        for record in self._in_state((key,), SendState.IN_DOUBT):
            settled = resolved(record, sent, as_utc(at))
            self._put(settled)
            return settled
        return None

    def set_meta(self, name: str, value: str) -> None:
        self._set_item(self._store.meta, name, value)

    # -- delivery evidence -----------------------------------------------------------------
    def add_delivery_events(self, events: Sequence[DeliveryEvent]) -> list[DeliveryEvent]:
        store = self._store
        added = []
        for given in events:
            if given.sg_event_id in store.events:
                continue
            event = replace(given, at=as_utc(given.at), received_at=as_utc(given.received_at))
            store.add_event(event)
            self._undo.append((store.drop_event, (event,)))
            added.append(event)
        return added

    def settle_by_evidence(
        self, at: datetime, keys: Collection[str] | None = None, limit: int = 1000
    ) -> list[SendRecord]:
        store = self._store
        wanted = sorted(store.events_by_key if keys is None else set(keys))
        found = [
            r for r in self._in_state(wanted, SendState.IN_DOUBT) if r.key in store.events_by_key
        ]
        if keys is None:
            found = found[: max(limit, 0)]
        settled = []
        for record in found:
            done = settled_by_evidence(
                record, first_evidence(store.events_by_key[record.key]), as_utc(at)
            )
            self._put(done)
            settled.append(done)
        return settled

    def resend_unverified(
        self, in_doubt_before: datetime, at: datetime, limit: int = 1000
    ) -> list[SendRecord]:
        store = self._store
        before = as_utc(in_doubt_before)
        found = sorted(
            (
                r
                for r in store.sends.values()
                if r.state == SendState.IN_DOUBT
                and r.on_doubt == OnDoubt.VERIFY
                and r.updated_at is not None
                and r.updated_at <= before
                and r.key not in store.events_by_key
                and r.key not in store.resent
            ),
            key=lambda r: (r.updated_at, r.key),
        )[: max(limit, 0)]
        again = [resent_for_verify(record, as_utc(at)) for record in found]
        for record in again:
            self._put(record)
            store.resent[record.key] = as_utc(at)
            self._undo.append((store.resent.pop, (record.key,)))
        return again

    def delivery_events(self, key: str) -> list[DeliveryEvent]:
        return sorted(self._store.events_by_key.get(key, ()), key=_event_order)

    def get_meta(self, name: str) -> str | None:
        return self._store.meta.get(name)

    def _in_state(self, keys: Iterable[str], state: SendState) -> list[SendRecord]:
        sends = self._store.sends
        return [
            record
            for key in dict.fromkeys(keys)
            if (record := sends.get(key)) is not None and record.state == state
        ]


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
        self._store = _Store()
        self._lock = threading.RLock()
        self._busy = False
        self._closed = False

    def transaction(self) -> MemoryTxn:
        # A class rather than @contextmanager: simulate opens several transactions per event.
        return MemoryTxn(self, self._clock)

    def _begin(self) -> _Store:
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
    def _reading(self) -> Iterator[_Store]:
        with self._lock:
            self._check_usable()
            yield self._store

    def status(self, limit: int = 10) -> LedgerStatus:
        with self._reading() as store:
            version = store.meta.get("rules_version")
            return status_of(list(store.sends.values()), len(store.dead), version, limit)

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
            return sorted(store.events_by_key.get(key, ()), key=_event_order)

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        with self._reading() as store:
            for event in store.events.values():
                of_rule = counts.setdefault(event.rule_id, {})
                of_rule[event.event.value] = of_rule.get(event.event.value, 0) + 1
        return counts

    def doubt_resent(self, keys: Collection[str]) -> set[str]:
        with self._reading() as store:
            return {key for key in keys if key in store.resent}

    def in_doubt_by_evidence(self) -> dict[EvidenceState, int]:
        counts = dict.fromkeys(EvidenceState, 0)
        with self._reading() as store:
            for record in store.sends.values():
                if record.state != SendState.IN_DOUBT:
                    continue
                if record.key in store.events_by_key:
                    state = EvidenceState.EVIDENCE_RECEIVED
                elif record.on_doubt != OnDoubt.VERIFY:
                    state = EvidenceState.AWAITING_EVIDENCE
                elif record.key in store.resent:
                    state = EvidenceState.RESENT_NO_EVIDENCE
                else:
                    state = EvidenceState.AWAITING_VERIFY
                counts[state] += 1
        return counts

    def close(self) -> None:
        with self._lock:
            self._closed = True
