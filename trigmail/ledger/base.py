"""The ledger boundary: one small protocol, with memory, SQLite and PostgreSQL behind it.

Every read and write happens inside :meth:`Ledger.transaction`; what a transaction writes is
visible to its own later reads, so the engine can decide a batch of events one by one and
commit them (and the source position) at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from trigmail.decisions import LogEntry
from trigmail.evidence import DeliveryEvent, EvidenceState
from trigmail.records import record
from trigmail.sends import DELIVERED_STATES, FINISHED_STATES, SendRecord, SendState, evolve

# The send record and its states live in trigmail.sends; they are named here too because the
# ledger's callers have always found them here.
__all__ = [
    "DELIVERED_STATES",
    "FINISHED_STATES",
    "WATERMARK_META",
    "CancelMark",
    "DeadLetter",
    "Ledger",
    "LedgerStatus",
    "LedgerTxn",
    "SendRecord",
    "SendState",
    "evolve",
]


# The meta row holding the event-order gate of a source as serve last published it:
# ``watermark:<source name>`` -> ``{"at", "held", "updated"}`` (``trigmail status`` reads it).
WATERMARK_META = "watermark:"


@record
class CancelMark:
    """A ``cancel_on`` event read from a source whose readers may decide events out of the
    order they entered it (a Redis group): kept so that a trigger decided after it, but which
    entered the source before it, still ends cancelled.

    Attributes:
        order: where the event entered the source (text that sorts as the source orders).
        values: the event's values at the paths ``cancel_on`` rules match on.
    """

    user_id: str
    order: str
    event: str
    event_id: str
    values: Mapping[str, Any]
    at: datetime


@record
class DeadLetter:
    """A bad event set aside with its reason; ``raw`` is the input as it was read."""

    at: datetime
    source: str
    position: str
    raw: str
    reason: str
    detail: str


class LedgerTxn(Protocol):
    """The reads and writes of one transaction."""

    # -- reads the engine decides from -------------------------------------------------
    def seen_event(self, event_id: str) -> bool:
        """Return whether ``event_id`` was already decided."""
        ...

    def send_exists(self, key: str) -> bool:
        """Return whether a send with ``key`` exists, in any state."""
        ...

    def last_delivered_at(self, rule_id: str, user_id: str) -> datetime | None:
        """Return the latest ``claimed_at`` of the rule's sends to the user in a delivered state."""
        ...

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        """Return the user's ``scheduled`` sends of the given rules."""
        ...

    def delivered_count_since(
        self, user_id: str, categories: Collection[str], since: datetime
    ) -> int:
        """Count the user's sends in a delivered state claimed at or after ``since`` whose
        payload has any of ``categories``."""
        ...

    def lock_users(self, user_ids: Collection[str]) -> None:
        """Take the locks of these users' decisions now, in one order every worker follows.

        A shared ledger (PostgreSQL) locks each user before its first read or write keyed by
        the user; a batch taking them one by one in event order could deadlock with another
        batch taking them in another order. Taking a batch's users up front in one global order
        cannot. Memory and SQLite serialise whole transactions: nothing to do.
        """
        ...

    # -- writes of the event path --------------------------------------------------------
    def cancel_marks_after(self, user_id: str, order: str) -> list[CancelMark]:
        """Return ``user_id``'s cancel marks of events that entered the source after ``order``."""
        ...

    def add_cancel_mark(self, mark: CancelMark) -> None:
        """Keep a cancel mark (a second one for the same user and order is ignored)."""
        ...

    def mark_seen(self, event_id: str, at: datetime) -> bool:
        """Record ``event_id`` as decided; ``False`` when it already was."""
        ...

    def expect_seen(self, event_ids: Collection[str], at: datetime) -> None:
        """A hint: the ids this transaction is about to :meth:`mark_seen` (at ``at``), so that
        a backend may read which were decided, or record the new ones, in one statement."""
        ...

    def expect_sends(self, keys: Iterable[str]) -> None:
        """A hint: keys :meth:`send_exists` is about to be asked about, so that a backend may
        read which exist in one statement (a key inserted since is still found). A backend
        that has no use for them leaves ``keys`` unread: they are computed as it reads."""
        ...

    def expect_reads(self, pending: Collection[str], delivered: Collection[str]) -> None:
        """A hint: the users whose scheduled sends :meth:`pending_for_user` (``pending``) and
        whose last deliveries :meth:`last_delivered_at` (``delivered``) are about to be asked
        about, so that a backend may read all of them in one statement each, at the first such
        read (the answers still see this transaction's own writes). Any other user is read
        alone, as without a hint."""
        ...

    def insert_send(self, send: SendRecord) -> bool:
        """Insert a ``scheduled`` send; ``False`` (and no change) when its key exists."""
        ...

    def cancel_sends(self, keys: Collection[str], reason: str, at: datetime) -> list[str]:
        """Move those of ``keys`` still ``scheduled`` to ``cancelled``; return which moved."""
        ...

    def log(self, entries: Sequence[LogEntry]) -> None:
        """Append to the decision log."""
        ...

    def add_dead_letter(self, letter: DeadLetter) -> None:
        """Set a bad event aside."""
        ...

    def get_position(self, source: str) -> str | None:
        """Return the source's committed read position (opaque text), if any."""
        ...

    def set_position(self, source: str, position: str) -> None:
        """Store the source's read position; commits with the decisions of this transaction."""
        ...

    # -- writes of the send path -----------------------------------------------------------
    def due_sends(self, until: datetime, limit: int) -> list[SendRecord]:
        """Return ``scheduled`` sends with ``due_at <= until``, earliest first."""
        ...

    def next_due_at(self) -> datetime | None:
        """Return the earliest ``due_at`` of any ``scheduled`` send."""
        ...

    def expect_claims(self, keys: Iterable[str]) -> None:
        """A hint: keys :meth:`claim` may be asked to claim in this transaction, so that a
        backend may read their sends in one statement and decide the claims from them."""
        ...

    def claim(self, keys: Collection[str], at: datetime) -> list[SendRecord]:
        """Move ``scheduled`` sends to ``sending`` (attempts + 1, ``claimed_at = at``).

        Returns the claimed records as they now are; keys no longer ``scheduled`` are left out.
        """
        ...

    def finish(
        self,
        keys: Collection[str],
        state: SendState,
        at: datetime,
        message_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Move ``sending`` sends to ``sent``, ``failed`` or ``in_doubt``."""
        ...

    def retry_later(self, keys: Collection[str], due_at: datetime, error: str) -> None:
        """Move ``sending`` sends back to ``scheduled`` at ``due_at`` (never reached provider)."""
        ...

    def drop(self, key: str, reason: str, at: datetime) -> bool:
        """Move a ``scheduled`` send to ``cancelled`` with ``reason``; ``False`` if it was not."""
        ...

    def defer(self, key: str, due_at: datetime) -> bool:
        """Give a ``scheduled`` send a later ``due_at``; ``False`` if not scheduled."""
        ...

    def cancelled_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        """Return ``user_id``'s ``cancelled`` sends of these rules, soonest due first."""
        ...

    def restore(self, key: str, at: datetime) -> SendRecord | None:
        """Undo the cancel of a ``cancelled`` send: ``scheduled`` again, with no reason; return
        it as stored now, or ``None`` if it was not cancelled."""
        ...

    def move_cancel_mark(self, user_id: str, event_id: str, order: str) -> None:
        """Move ``user_id``'s marks of the event ``event_id`` that stand after ``order`` to
        ``order``."""
        ...

    def rematch(self, key: str, cancel_match: Mapping[str, Any]) -> bool:
        """Give a ``scheduled`` send new trigger values for its cancels (``cancel_match``);
        ``False`` if not scheduled."""
        ...

    def expire_leases(self, at: datetime) -> list[SendRecord]:
        """Settle, as :meth:`recover_in_flight` does, the ``sending`` sends whose claim's lease
        expired by ``at``: their worker died while the others live on. Returns them in key order.

        Only a ledger shared by several workers (PostgreSQL) has leases; memory and SQLite, the
        ledgers of one process, return ``[]`` (their process settles its own sends at start).
        """
        ...

    def recover_in_flight(self, at: datetime) -> list[SendRecord]:
        """After a crash: every ``sending`` send this ledger may settle becomes ``in_doubt``,
        except under ``on_doubt: resend``, where it becomes ``scheduled`` again. Returns the
        records changed, in key order.

        A ledger of one process (memory, SQLite) settles every ``sending`` send. A ledger shared
        by several workers (PostgreSQL) settles only this worker's own and those whose claim's
        lease expired by ``at`` (their worker died): another live worker's sends are its own.
        """
        ...

    def resolve(self, key: str, sent: bool, at: datetime) -> SendRecord | None:
        """Settle an ``in_doubt`` send by what an operator found at the provider.

        ``sent=True`` makes it ``sent``; ``sent=False`` makes it ``scheduled`` again, due at
        ``at`` with ``claimed_at`` cleared (it no longer holds cooldowns and caps back), so the
        daemon sends it. ``last_error`` records the operator's word, keeping the old error.

        Returns:
            The send as it now is, or ``None`` (and no change) when ``key`` names no send in
            ``in_doubt``; the caller reads the send to say why.
        """
        ...

    def set_meta(self, name: str, value: str) -> None:
        """Store a small named value (``rules_version``)."""
        ...

    # -- delivery evidence (SendGrid's Event Webhook, docs/webhook.md) ------------------------
    def add_delivery_events(self, events: Sequence[DeliveryEvent]) -> list[DeliveryEvent]:
        """Store webhook events; one already stored (same ``sg_event_id``) is left as it is.

        Returns:
            The events stored now, in the order given.
        """
        ...

    def settle_by_evidence(
        self, at: datetime, keys: Collection[str] | None = None, limit: int = 1000
    ) -> list[SendRecord]:
        """Make ``sent`` every ``in_doubt`` send (of ``keys``, or any, at most ``limit``) with a
        stored event for its key: the earliest event's message id, the evidence as its reason.

        Returns:
            The settled sends as they now are, in key order.
        """
        ...

    def resend_unverified(
        self, in_doubt_before: datetime, at: datetime, limit: int = 1000
    ) -> list[SendRecord]:
        """Schedule again, due at ``at``, each ``on_doubt: verify`` send in doubt since before
        ``in_doubt_before`` with no stored event and never sent again so before: once per send.

        Returns:
            The sends scheduled again, as they now are, oldest doubt first.
        """
        ...

    def delivery_events(self, key: str) -> list[DeliveryEvent]:
        """Return the stored events of the send ``key``, in SendGrid's time order."""
        ...

    def get_meta(self, name: str) -> str | None:
        """Return a value stored with ``set_meta``, as this transaction sees it."""
        ...


@dataclass(frozen=True)
class LedgerStatus:
    """What ``trigmail status`` shows, read in one go."""

    counts: Mapping[SendState, int]
    by_rule: Mapping[str, Mapping[SendState, int]]
    next_due: Sequence[SendRecord]
    in_doubt: Sequence[SendRecord]
    failed: Sequence[SendRecord]
    recent: Sequence[SendRecord]
    dead_letters: int
    rules_version: str | None
    #: Sends of A/B splits: rule id, then variant id, then counts by state.
    by_variant: Mapping[str, Mapping[str, Mapping[SendState, int]]] = field(default_factory=dict)


class Ledger(Protocol):
    """A durable (or, for ``simulate``, in-memory) store of everything trigmail decided."""

    #: Whether several workers write to this ledger at once (PostgreSQL), so a send cached in
    #: one worker's scheduler may have been claimed or settled by another since.
    shared: bool

    def transaction(self) -> AbstractContextManager[LedgerTxn]:
        """Open a transaction: committed on normal exit, rolled back on an exception."""
        ...

    def status(self, limit: int = 10) -> LedgerStatus:
        """Return counts and the most telling sends, ``limit`` of each list."""
        ...

    def count_sends(self, states: Collection[SendState]) -> dict[SendState, int]:
        """Return how many sends are in each of ``states``, each read from an index: the
        daemon's gauges ask every few seconds, where :meth:`status` reads every send."""
        ...

    def get_send(self, key: str) -> SendRecord | None:
        """Return one send by key."""
        ...

    def get_meta(self, name: str) -> str | None:
        """Return a value stored with ``set_meta``."""
        ...

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Return the newest dead letters first."""
        ...

    def decision_log(self, event_id: str | None = None, limit: int = 100) -> list[LogEntry]:
        """Return decision log entries, newest first, optionally of one event (a diagnostic
        read, no serve path's: SQLite scans its log for one event, which no index serves)."""
        ...

    def prune(self, before: datetime) -> int:
        """Delete finished sends, seen ids, log lines, dead letters and webhook events older
        than ``before``.

        Never deletes a row of ``before`` or later. SQLite deletes seen ids and log lines in
        the order they were written, up to the first one still inside retention: a row written
        under a clock set back, older than a row written before it, is kept until that row
        goes (longer than the retention, never shorter).
        """
        ...

    def delivery_events(self, key: str) -> list[DeliveryEvent]:
        """Return the stored webhook events of the send ``key``, in SendGrid's time order."""
        ...

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """Return how many webhook events of each type each rule's sends had (rule -> type)."""
        ...

    def doubt_resent(self, keys: Collection[str]) -> set[str]:
        """Return which of ``keys`` were sent again under ``on_doubt: verify``."""
        ...

    def in_doubt_by_evidence(self) -> dict[EvidenceState, int]:
        """Count the ``in_doubt`` sends by evidence state (every state, zeros included)."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
