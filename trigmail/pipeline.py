"""The imperative shell around the engine, shared by ``serve`` and ``simulate``.

``ingest`` turns raw source items into committed decisions; ``fire_due`` claims the sends that
fell due (``sending`` is committed before any provider call); ``deliver`` calls the provider and
records the outcome. Only the clock, the ledger and the provider differ between the two commands.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from types import TracebackType

from trigmail import faults
from trigmail.decisions import (
    Defer,
    Drop,
    LogEntry,
    Outcome,
    Reason,
)
from trigmail.delivery import Request, Retry, RetryPolicy, decide_failure, halves, requests
from trigmail.engine import decide_due, decide_paused
from trigmail.errors import BadEventError, DeliveryError
from trigmail.events import Event
from trigmail.ingest import BatchWriter, Ingested, Item, expect_batch, parse_item
from trigmail.ledger.base import Ledger, LedgerTxn, SendRecord, SendState
from trigmail.loglines import lines_together
from trigmail.outcomes import Outcomes
from trigmail.pauses import PAUSES_META, Pause, Pauses, decode, in_force, log_changes
from trigmail.providers.base import Provider
from trigmail.rules.model import RuleSet
from trigmail.scheduler import Scheduler
from trigmail.sends import send_entry

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# The outcome of a send settled after a failed request, by its final state.
_SETTLED = {SendState.FAILED: Outcome.FAILED, SendState.IN_DOUBT: Outcome.IN_DOUBT}


# How old the pauses a worker obeys may be: `trigmail pause` reaches every worker within it.
PAUSES_MAX_AGE_S = 1.0


class Pipeline:
    """Source items in, provider calls out, every state change through the ledger.

    Args:
        ledger: where every decision is committed.
        rules: returns the rule set in force (it may be swapped by a reload at any time).
        provider: where due emails go.
        clock: the current time; a virtual clock under ``simulate``.
        scheduler: the cache of sends due soon.
        retry: the backoff for retryable delivery failures.
        rng: the source of jitter (seeded in tests).
        on_entries: called with a commit's decision log entries, once it is committed.
    """

    def __init__(
        self,
        ledger: Ledger,
        rules: Callable[[], RuleSet],
        provider: Provider,
        clock: Clock,
        *,
        scheduler: Scheduler | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        on_entries: Callable[[Sequence[LogEntry]], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.rules = rules
        self.provider = provider
        self.clock = clock
        # Not `scheduler or ...`: an empty scheduler is falsy (it has a length).
        self.scheduler = Scheduler() if scheduler is None else scheduler
        self.retry = retry or RetryPolicy()
        self.rng = rng or random.Random()
        self.on_entries = on_entries
        self._lock = threading.Lock()
        self._reread_on_failure = _RereadOnFailure(self)
        self._outcomes = Outcomes(ledger)
        self._version_recorded: str | None = None
        self._pauses: dict[str, Pause] = {}
        self._pauses_read_s: float | None = None

    # -- events ------------------------------------------------------------------------------
    def ingest(self, items: Sequence[Item], source_name: str | None = None) -> Ingested:
        """Decide a batch of raw items and commit the decisions with the source position."""
        now = self.clock()
        return self.ingest_parsed([(item, parse_item(item, now)) for item in items], source_name)

    def ingest_parsed(
        self,
        parsed: Sequence[tuple[Item, Event | BadEventError]],
        source_name: str | None = None,
        *,
        gates: Sequence[datetime | None] | None = None,
    ) -> Ingested:
        """As :meth:`ingest`, for items the caller already parsed with :func:`parse_item`.

        Args:
            parsed: the items, in source order, each with its event or why it is bad.
            source_name: the source whose position the batch commits; ``None``: no position.
            gates: for each item, the watermark once every item before it is decided (see
                :class:`trigmail.worker.Worker`). Before the first item whose gate has reached
                a send's due time, the sends due by then are claimed, in the same transaction,
                as ``simulate`` fires them before it decides that item, and after the last
                item those due by its watermark; ``Ingested.claimed`` holds them for delivery.
        """
        pauses = self.pauses()  # before the transaction: read in one of its own
        now = self.clock()
        rules = self.rules()
        result = Ingested()
        with self._lock, self._reread_on_failure, self.ledger.transaction() as txn:
            events = [event for _, event in parsed if isinstance(event, Event)]
            if self.ledger.shared:
                txn.lock_users({event.user_id for event in events})
            expect_batch(txn, rules, events, now)
            last_gate = None if gates is None or not parsed else gates[len(parsed) - 1]
            cutoff = None if last_gate is None else min(last_gate, now)
            if cutoff is not None and not self.scheduler.needs_refill(now):
                # The cached sends that may fall due inside the batch, read at once: their
                # claims need no statement each (SQLite). A later one is claimed as ever.
                txn.expect_claims(self.scheduler.due_keys(cutoff))
            batch = BatchWriter(txn, rules, now, source_name or "", result)
            batch_due: datetime | None = None
            for index, (item, event) in enumerate(parsed):
                gate = None if gates is None else gates[index]
                if gate is not None and self._due_by(min(gate, now), batch_due):
                    # Claimed, not delivered: a claimed send is past any cancel, which is all
                    # the items after it must see. One transaction keeps a live spool of
                    # immediate sends from committing once per line.
                    fired = self._claim_due(
                        txn, (rules, pauses), now, min(gate, now), result.entries
                    )
                    result.claimed.extend(fired)
                    batch_due = None
                scheduled = len(result.scheduled)
                batch.ingest(item, event)
                if len(result.scheduled) > scheduled:  # else no slice, no call
                    batch_due = self._cache_new(result.scheduled[scheduled:], batch_due)
                result.consumed += 1
            if cutoff is not None and self._due_by(cutoff, batch_due):
                # What falls due by the last line's watermark fires before any later line
                # whatever it is: claimed here rather than in a transaction of its own.
                fired = self._claim_due(txn, (rules, pauses), now, cutoff, result.entries)
                result.claimed.extend(fired)
            if source_name is not None and result.consumed:
                txn.set_position(source_name, parsed[result.consumed - 1][0].position)
            txn.log(result.entries)
            if rules.version != self._version_recorded:
                txn.set_meta("rules_version", rules.version)
        self._version_recorded = rules.version
        self._publish(result.entries)
        return result

    def _cache_new(self, sends: Sequence[SendRecord], batch_due: datetime | None) -> datetime:
        """Cache an event's new sends (the caller holds the lock); return the earliest due
        time of ``sends`` and ``batch_due``."""
        for send in sends:
            self.scheduler.add(send)
        due_at = min(send.due_at for send in sends)
        return due_at if batch_due is None else min(batch_due, due_at)

    def _due_by(self, cutoff: datetime, batch_due: datetime | None) -> bool:
        """Whether a send falls due by ``cutoff`` (the caller holds the lock): one scheduled
        earlier in this batch, or one the cache holds."""
        if batch_due is not None and batch_due <= cutoff:
            return True
        cached = self.scheduler.next_due_at()
        return cached is not None and cached <= cutoff

    # -- sends -------------------------------------------------------------------------------
    def start(self) -> list[SendRecord]:
        """Settle what a crash left in flight and load the scheduler; returns the sends settled."""
        changed = self.recover()
        with self._lock, self.ledger.transaction() as txn:
            self.scheduler.refill(txn, self.clock())
        return changed

    def reread_due(self) -> None:
        """Read the due sends from the ledger again at the next :meth:`fire_due`."""
        with self._lock:
            self.scheduler.invalidate()

    def earliest_due(self) -> datetime | None:
        """Return when the earliest cached send falls due (``None``: none cached)."""
        with self._lock:
            return self.scheduler.next_due_at()

    def count_due(self, after: datetime | None, until: datetime) -> int:
        """Count the cached sends due after ``after`` (``None``: any time) and by ``until``."""
        with self._lock:
            return self.scheduler.count_due(after, until)

    def next_wakeup(self) -> datetime | None:
        """Return when the next cached send falls due, or when the horizon must be reloaded."""
        with self._lock:
            return self.scheduler.next_due_at() or self.scheduler.loaded_until

    def fire_due(
        self, limit: int = 1000, linger_s: float = 0.0, until: datetime | None = None
    ) -> list[SendRecord]:
        """Claim the sends due now (committed as ``sending``) and drop or defer the rest.

        Args:
            limit: the most sends taken at once.
            linger_s: wait until the earliest due send is this late, so that sends falling
                due meanwhile join its provider request (personalization batching).
            until: take only sends due by then (the event-order gate); default: now.
        """
        pauses = self.pauses()
        now = self.clock()
        rules = self.rules()
        entries: list[LogEntry] = []
        cutoff = now if until is None else min(until, now)
        fires_by = min(now - timedelta(seconds=linger_s), cutoff)
        with self._lock:
            # Asked on every turn of a loop that the gate holds: the cache answers "nothing"
            # without waiting for the ledger, which the senders' commits hold meanwhile.
            if not self.scheduler.needs_refill(now) and not self._due_by(fires_by, None):
                return []
        with self._lock, self._reread_on_failure, self.ledger.transaction() as txn:
            if self.scheduler.needs_refill(now):
                self.scheduler.refill(txn, now)
            earliest = self.scheduler.next_due_at()
            if earliest is None or earliest > fires_by:
                return []
            claimed = self._claim_due(txn, (rules, pauses), now, cutoff, entries, limit=limit)
            txn.log(entries)
        self._publish(entries)
        return claimed

    def pauses(self) -> dict[str, Pause]:
        """The rule pauses in force (trigmail/pauses.py), read from the ledger at most
        :data:`PAUSES_MAX_AGE_S` ago: every worker obeys a pause within that bound."""
        now_s = time.monotonic()
        if self._pauses_read_s is None or now_s - self._pauses_read_s >= PAUSES_MAX_AGE_S:
            read = decode(self.ledger.get_meta(PAUSES_META))
            log_changes(self._pauses, read, log)
            self._pauses, self._pauses_read_s = read, now_s
        return in_force(self._pauses, self.clock())

    def _claim_due(
        self,
        txn: LedgerTxn,
        policy: tuple[RuleSet, Pauses],
        now: datetime,
        cutoff: datetime,
        entries: list[LogEntry],
        *,
        limit: int = 1000,
    ) -> list[SendRecord]:
        """In ``txn``, under the lock: claim the cached sends due by ``cutoff`` that fire, and
        drop or defer the others (noted in ``entries``)."""
        if self.scheduler.needs_refill(now):
            self.scheduler.refill(txn, now)
        claimed: list[SendRecord] = []
        deferred: list[SendRecord] = []
        # Cooldowns and caps are per user: a send is claimed before the next send of the
        # same user is decided (so that one sees it), and sends of distinct users are
        # claimed together, in one statement.
        firing: dict[str, str] = {}  # user id -> key, waiting to be claimed
        due = self.scheduler.pop_due(cutoff, limit)
        if self.ledger.shared:
            txn.lock_users({send.user_id for send in due})
        for popped in due:
            # One process's cache cannot go stale: only a shared ledger needs the re-read.
            sends = self._due_in_order(txn, popped, cutoff) if self.ledger.shared else [popped]
            for send in sends:
                if send.user_id in firing:
                    claimed.extend(txn.claim(list(firing.values()), now))
                    firing.clear()
                if self._decide_due(txn, send, policy, now, entries=entries, deferred=deferred):
                    firing[send.user_id] = send.key
        claimed.extend(txn.claim(list(firing.values()), now))
        for send in deferred:
            self.scheduler.add(send)
        return claimed

    @staticmethod
    def _decide_due(
        txn: LedgerTxn,
        send: SendRecord,
        policy: tuple[RuleSet, Pauses],
        now: datetime,
        *,
        entries: list[LogEntry],
        deferred: list[SendRecord],
    ) -> bool:
        """Drop or defer a due send (noting it in ``entries`` or ``deferred``); ``True`` when
        it fires instead."""
        rules, pauses = policy
        decision = decide_paused(send, pauses, now) or decide_due(send, rules, txn, now)
        if isinstance(decision, Drop):
            if txn.drop(send.key, decision.reason.value, now):
                entries.append(
                    send_entry(send, Outcome.DROPPED, decision.reason, now, decision.detail)
                )
        elif isinstance(decision, Defer):
            if txn.defer(send.key, decision.due_at):
                deferred.append(replace(send, due_at=decision.due_at))
        else:
            return True
        return False

    @staticmethod
    def _due_in_order(txn: LedgerTxn, send: SendRecord, cutoff: datetime) -> list[SendRecord]:
        """The send as the ledger holds it now, after the same rule's sends of its user that
        fell due before it and are still scheduled; empty when it is no longer scheduled and due.

        A cache entry can be stale: with a shared ledger another worker may have claimed the
        send since. Deciding from the stale entry, the cooldown counted the send's own claim and
        dropped it; the drop (``state = 'scheduled'``) then hit it once its sender had put it
        back after a 503, and no email went out. Read under the user's lock (which every
        decision about the user holds), a scheduled send stays scheduled to the commit.

        The earlier sends come first because each worker's cache holds the sends it scheduled:
        the worker that scheduled a user's second nudge could fire it while the first waited in
        another worker's cache, and the cooldown then dropped the first, out of event order.
        """
        current = txn.pending_for_user(send.user_id, {send.rule_id})
        keys = [each.key for each in current]
        if send.key not in keys:
            return []  # claimed, settled or rescheduled elsewhere: its holder fires it
        upto = current[: keys.index(send.key) + 1]
        return [] if upto[-1].due_at > cutoff else upto

    def deliver(self, sends: Sequence[SendRecord]) -> None:
        """Send claimed sends through the provider, request by request, and record each outcome."""
        for request in requests(sends):
            self.deliver_batch(request)

    def deliver_batch(self, request: Request) -> None:
        """Send one request (see :func:`~trigmail.delivery.requests`) and record the outcome."""
        try:
            accepted = self.provider.send(request.emails)
        except DeliveryError as exc:
            parts = halves(request, exc)
            for part in parts:
                self.deliver_batch(part)
            if not parts:
                self._record_failure(request.sends, exc)
            return
        faults.reached(faults.KillPoint.AFTER_ACCEPT)
        now = self.clock()
        keys = [send.key for send in request.sends]
        entries = [send_entry(s, Outcome.SENT, Reason.DELIVERED, now) for s in request.sends]
        self._outcomes.sent(keys, now, accepted.message_id, entries)
        # Each email is logged at info by the decision listener: the request is detail.
        log.debug(
            "provider: one request accepted for %d emails (message id %s)",
            len(keys),
            accepted.message_id,
        )
        self._publish(entries)

    def release(self, sends: Sequence[SendRecord], why: str) -> None:
        """Put claimed sends that were never handed to the provider back to ``scheduled``."""
        now = self.clock()
        with self.ledger.transaction() as txn:
            txn.retry_later([send.key for send in sends], now, why)
        with self._lock:
            for send in sends:
                self.scheduler.add(replace(send, due_at=now, state=SendState.SCHEDULED))

    def _record_failure(self, batch: Sequence[SendRecord], exc: DeliveryError) -> None:
        now = self.clock()
        decisions = [decide_failure(s, exc, self.retry, now, self.rng.random()) for s in batch]
        entries: list[LogEntry] = []
        retried: list[SendRecord] = []
        with self.ledger.transaction() as txn:
            for send, decision in zip(batch, decisions, strict=True):
                if isinstance(decision, Retry):
                    txn.retry_later([send.key], decision.due_at, decision.detail)
                    retried.append(replace(send, due_at=decision.due_at, state=SendState.SCHEDULED))
                else:
                    txn.finish([send.key], decision.state, now, error=decision.detail)
                    outcome = _SETTLED[decision.state]
                    entries.append(send_entry(send, outcome, decision.reason, now, decision.detail))
            txn.log(entries)
        with self._lock:
            for send in retried:
                self.scheduler.add(send)
        for send, decision in zip(batch, decisions, strict=True):
            if isinstance(decision, Retry):
                wait_s = (decision.due_at - now).total_seconds()
                log.info("send %s: retry in %.1fs after %s", send.key, wait_s, decision.detail)
        # A failure or a doubt is logged by the entry's listener, with the other decisions.
        self._publish(entries)

    def expire_leases(self) -> list[SendRecord]:
        """Settle the sends of workers that died while sending (shared ledgers only)."""
        with self.ledger.transaction() as txn:
            changed = txn.expire_leases(self.clock())
        with self._lock:
            for send in changed:
                if send.state is SendState.SCHEDULED:
                    self.scheduler.add(send)
        for send in changed:
            log.warning("send %s: its worker's lease expired: now %s", send.key, send.state.value)
        return changed

    def recover(self) -> list[SendRecord]:
        """After a crash: settle sends left ``sending`` (in doubt, or rescheduled to resend)."""
        with self.ledger.transaction() as txn:
            changed = txn.recover_in_flight(self.clock())
        for send in changed:
            if send.state is SendState.IN_DOUBT:
                log.warning("send %s: in doubt after a crash while sending", send.key)
        return changed

    def _publish(self, entries: Sequence[LogEntry]) -> None:
        if self.on_entries is not None:
            # A request's thousand lines sent go to stderr in one write (see lines_together).
            with lines_together():
                self.on_entries(entries)


class _RereadOnFailure:
    """Around :meth:`Pipeline.fire_due`'s transaction: should it fail, its rollback leaves the
    sends popped from the cache scheduled, but gone from the cache, where they would wait for
    the horizon to run out (5 minutes by default). Forgetting the horizon makes the next call
    read them from the ledger again. (A transaction fails on a lost connection, a full disk, or
    a deadlock PostgreSQL breaks by aborting it.)"""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._pipeline.scheduler.invalidate()
