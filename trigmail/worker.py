"""The serve loop's policy: what to do next, read, fire or deliver, decided from ``now``.

:meth:`Worker.step` is one turn of the loop, with time passed in (huey's ``loop(now)``), so the
whole policy runs in tests on a virtual clock; :class:`~trigmail.daemon.Daemon` keeps the
threads, the signals and the real clock around it.

The event-order gate (docs/design.md, "Event order"): a send due at T is fired only once every
event that entered the source before T has been decided. The source's watermark says how far
that holds: for a Redis stream, the oldest entry of the group not yet acknowledged by any
consumer; for the spool, the last time the file was read to its end with every line decided,
and, in between, the highest producer ``ts`` decided so far (lines are decided in file order,
so on a backlog serve fires each send at the point of the file where ``simulate`` would).
Past ``max_hold_s`` a held send fires anyway, counted, so that a stalled source cannot stop
all email.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from trigmail import faults
from trigmail.delivery import requests
from trigmail.errors import BadEventError
from trigmail.events import Event, format_ts
from trigmail.ingest import parse_item
from trigmail.ledger.base import WATERMARK_META, Ledger, SendRecord, SendState
from trigmail.metrics import Metrics
from trigmail.pipeline import Pipeline
from trigmail.sources.base import Source, SourceItem

log = logging.getLogger(__name__)

# The longest the loop waits for events before looking at due sends and signals again.
IDLE_WAIT_S = 0.25
# With every request slot busy and sends due, how often the loop looks for a slot that freed.
SLOT_POLL_S = 0.01
# While due sends are held by the watermark, how often it is asked again: other workers
# acknowledge entries without waking this one.
HELD_POLL_S = 0.05
# Reading stops while this many requests per slot are in flight or queued.
BACKLOG_FACTOR = 2
# Sends claimed at most per provider request slot (SendGrid's personalizations per request).
MAX_REQUEST_SENDS = 1000
# How often the ledger's scheduled and in-doubt counts are copied into gauges.
GAUGE_REFRESH_S = 15.0
# How often the watermark's lag and the held sends are published: gauges, and ``status``
# (a ledger write, so less often).
WATERMARK_GAUGE_S = 1.0
WATERMARK_STATUS_S = 5.0
# How often claims of dead workers (expired leases of a shared ledger) are looked for.
LEASE_CHECK_S = 10.0
# How often rows older than the retention are pruned from the ledger.
PRUNE_EVERY_S = 3600.0
# A cutoff before any due time: nothing fires.
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Gate:
    """Where the event-order gate stands at one moment."""

    watermark: datetime | None  # every event that entered before it is decided
    cutoff: datetime  # sends due by then may fire now
    held: int = 0  # cached sends due now but held back


class Worker:
    """One serve worker: reads a source, decides, fires due sends, hands them to an executor.

    Args:
        source: where events come from.
        pipeline: decisions and ledger writes.
        executor: runs provider requests (a thread pool under serve).
        metrics: the Prometheus metrics.
        concurrency: provider requests in flight at most.
        batch_size: the most events decided (and committed) together.
        batch_window_s: how long a due send waits for others to share its provider request.
        max_hold_s: how long the event-order gate may hold a due send; ``0`` turns it off.
        retention_s: how long finished sends, seen event ids and dead letters are kept.
    """

    def __init__(
        self,
        source: Source,
        pipeline: Pipeline,
        executor: Executor,
        metrics: Metrics,
        *,
        concurrency: int = 8,
        batch_size: int = 500,
        batch_window_s: float = 0.025,
        max_hold_s: float = 300.0,
        retention_s: float = 90 * 86_400,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.ledger: Ledger = pipeline.ledger
        self.executor = executor
        self.metrics = metrics
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.max_hold_s = max_hold_s
        self.retention_s = retention_s
        self.in_flight: dict[Future[None], list[SendRecord]] = {}
        # Items read but not yet decided, each with its event, as the pipeline takes them; and
        # alongside, the time each one's producer gave it (if any). Two lists, not a record
        # per item: building one per event cost ~1 % of an ingested event (callgrind).
        self._held: list[tuple[SourceItem, Event | BadEventError]] = []
        self._held_ts: list[datetime | None] = []
        self._arrived: list[SourceItem] = []  # read while waiting, for the next step
        self._claimed: list[SendRecord] = []  # claimed while events were held, not yet sent
        self._full_read = False  # the last read filled a batch: more events are waiting
        self._mark: datetime | None = None  # the highest producer ts decided (ordered sources)
        self._past_burst = 0  # sends fired past the watermark since the gate last held
        self._next: dict[str, datetime] = {}  # timer name -> when it runs next
        self._started_at: datetime | None = None  # the first step's time

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> list[SendRecord]:
        """Settle a crash's leftovers, open the source at its committed position; return the
        sends settled."""
        settled = self.pipeline.start()
        with self.ledger.transaction() as txn:
            position = txn.get_position(self.source.name)
        self.source.start(position)
        self._restore_dead_letters()
        return settled

    def step(self, now: datetime) -> float:
        """Take one turn: collect answered requests, fire what is due and allowed, decide the
        next events; return how long the caller may wait for events before the next turn."""
        if self._started_at is None:
            self._started_at = now
        self._reap()
        self._fire(now)
        if not self._held and not self._backlogged():
            arrived, self._arrived = self._arrived, []
            self._hold(arrived or self._read(0.0), now)
        decided = self._decide(now) if self._held else True
        self._fire(now)
        if self._claimed and self._dispatch_now():
            self._dispatch()  # claims kept for the next batch's, which did not fill one
        # Last: a timer that fails (a locked ledger) must not keep events from being read.
        self._run_timers(now)
        if self._held:
            # The rest of the batch waits for a send due before it: a free slot lets it go.
            return 0.0 if decided or self._free_slots() else SLOT_POLL_S
        if self._claimed and not self._backlogged():
            return 0.0  # claims wait for the next batch's (see _dispatch_now): read it at once
        return self._wait_s(now)

    def wait_for_events(self, timeout_s: float) -> None:
        """Block up to ``timeout_s`` for events; what comes is decided at the next step (and
        read at its time: an event without ``ts`` happened when the step took it)."""
        if self._backlogged():
            # Reading waits for the provider: every slot busy and requests queued behind them.
            time.sleep(min(timeout_s, SLOT_POLL_S))
        elif not self._held and not self._arrived and timeout_s > 0:
            self._arrived = self._read(timeout_s)

    def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for the requests in flight; put back those never started."""
        if self._claimed:
            self.pipeline.release(self._claimed, "stopped before sending")
            self._claimed = []
        self._reap()
        pending = list(self.in_flight)
        if pending:
            log.info("serve: stopping: waiting for %d requests in flight", len(pending))
        deadline_s = time.monotonic() + timeout_s
        for future in pending:
            batch = self.in_flight[future]
            if future.cancel():
                self.pipeline.release(batch, "stopped before sending")
                continue
            try:
                future.result(timeout=max(deadline_s - time.monotonic(), 0.0))
            except TimeoutError:
                log.error("send %s: still in flight at stop", batch[0].key)
            except Exception as exc:  # logged; the next start settles the send as in doubt
                log.error("send %s: outcome not recorded: %s", batch[0].key, exc)

    # -- events ------------------------------------------------------------------------------
    def _read(self, timeout_s: float) -> list[SourceItem]:
        # A SourceError goes up to the daemon, which logs it once and backs off.
        items = self.source.read(self.batch_size, timeout_s)
        self._full_read = len(items) >= self.batch_size
        return items

    def _hold(self, items: Sequence[SourceItem], now: datetime) -> None:
        for item in items:
            event = parse_item(item, now)
            # An event without ``ts`` was given the read time: that says nothing of when it
            # entered the file, so it cannot move the watermark on.
            ts = event.ts if isinstance(event, Event) and event.ts != now else None
            self._held.append((item, event))
            self._held_ts.append(ts)

    def _decide(self, now: datetime) -> bool:
        """Decide held items up to the first one a due send must precede; return whether any
        was decided. Held until committed: if the ledger fails, they are decided again."""
        held, held_ts = self._held, self._held_ts
        faults.reached(faults.KillPoint.AFTER_READ)
        gates = self._gates(held_ts) if self._gate_on() and self.source.ordered else None
        started_s = time.perf_counter()
        ingested = self.pipeline.ingest_parsed(held, self.source.name, gates=gates)
        if not ingested.consumed:
            return False
        self.metrics.ledger_commit_seconds.observe(time.perf_counter() - started_s)
        consumed = ingested.consumed
        done, self._held = held[:consumed], held[consumed:]
        done_ts, self._held_ts = held_ts[:consumed], held_ts[consumed:]
        faults.reached(faults.KillPoint.AFTER_COMMIT)
        if ingested.claimed:
            faults.reached(faults.KillPoint.AFTER_CLAIM)
            self._claimed.extend(ingested.claimed)
        self._mark = _latest(self._mark, done_ts)
        for rejected in ingested.rejected:
            assert isinstance(rejected.item, SourceItem)
            self.source.dead_letter(rejected.item, rejected.reason, rejected.detail)
        self.source.ack([item for item, _ in done])
        self.metrics.events_read.labels(source=self.source.name).inc(len(done))
        if self._claimed and self._dispatch_now():
            self._dispatch()
        return True

    def _gates(self, held_ts: Sequence[datetime | None]) -> list[datetime | None]:
        """For each held item of an ordered source: the watermark once the items before it
        are decided (the highest producer ts up to and including it, as ``simulate``'s clock
        stands when it decides that line)."""
        mark = _latest(self._mark, [self.source.watermark()])
        gates: list[datetime | None] = []
        for ts in held_ts:
            if ts is not None and (mark is None or ts > mark):
                mark = ts
            gates.append(mark)
        return gates

    # -- sends -------------------------------------------------------------------------------
    def _gate_on(self) -> bool:
        return self.max_hold_s > 0

    def gate(self, now: datetime) -> Gate:
        """Return the watermark and the cutoff of due sends at ``now``."""
        if not self._gate_on():
            return Gate(None, now)
        watermark = self.source.watermark()
        if self.source.ordered:
            ahead = self._held_ts[0] if self._held_ts else None
            watermark = _latest(watermark, [self._mark, ahead])
        # A send is held from when it fell due, or from this worker's start if it fell due
        # while no worker ran: a backlog after an outage longer than max_hold is still
        # decided in order, and only a source that stays stuck lets sends past.
        started = self._started_at or now
        hold = timedelta(seconds=self.max_hold_s)
        floor = now - hold if now - started >= hold else None
        if watermark is None:
            return Gate(None, floor or _NEVER)
        cutoff = min(watermark, now)
        return Gate(watermark, cutoff if floor is None else max(cutoff, floor))

    def _fire(self, now: datetime) -> None:
        free = self._free_slots()
        # A batch cut behind a due send needs the send claimed (committed `sending`) before it
        # goes on, not delivered: while events are held, claims go ahead of the free slots and
        # wait in `_claimed`, which also lets them share requests.
        if free <= 0 and not self._held:
            return
        wakeup = self.pipeline.next_wakeup()
        if wakeup is not None and wakeup > now:
            return  # nothing due, and the horizon still holds (None: it must be read again)
        gate = self.gate(now)
        # A batch waiting behind a send fires it at once: lingering would hold the batch too.
        linger_s = 0.0 if self._held else self.batch_window_s
        limit = max(free, 1) * MAX_REQUEST_SENDS
        claimed = self.pipeline.fire_due(limit=limit, linger_s=linger_s, until=gate.cutoff)
        if claimed:
            faults.reached(faults.KillPoint.AFTER_CLAIM)
            if self._gate_on():
                self._count_past(claimed, gate)
        elif self._past_burst and (gate.watermark is None or gate.cutoff <= gate.watermark):
            self._end_burst()
        self._claimed.extend(claimed)
        if self._dispatch_now():
            self._dispatch()

    def _dispatch_now(self) -> bool:
        """Whether the claimed sends go to the provider now: a request's worth, or nothing
        left to decide first. Held events come first (a batch cut behind a due send goes on
        once it is claimed); so do the next batch's after a read that filled one: in a backlog,
        claims of several batches share requests (fewer requests, and fewer commits of their
        outcomes, each taking the ledger from the loop), at most a request's worth claimed."""
        if len(self._claimed) >= MAX_REQUEST_SENDS:
            return True
        return not self._held and not self._full_read

    def _dispatch(self) -> None:
        claimed, self._claimed = self._claimed, []
        for request in requests(claimed):
            future = self.executor.submit(self.pipeline.deliver_batch, request)
            self.in_flight[future] = request.sends

    def _count_past(self, claimed: Sequence[SendRecord], gate: Gate) -> None:
        if gate.watermark is not None:
            past = sum(1 for send in claimed if send.due_at > gate.watermark)
        else:
            past = len(claimed)
        if not past:
            return
        self.metrics.sends_fired_past_watermark.inc(past)
        if not self._past_burst:
            log.warning(
                "source %s: %d due sends fired past the watermark (%s), held longer than "
                "max_hold %.0fs: events that entered before them may not be decided yet",
                self.source.name,
                past,
                "unknown" if gate.watermark is None else gate.watermark.isoformat(),
                self.max_hold_s,
            )
        self._past_burst += past

    def _end_burst(self) -> None:
        log.info(
            "source %s: the watermark caught up; %d sends had fired past it",
            self.source.name,
            self._past_burst,
        )
        self._past_burst = 0

    def _free_slots(self) -> int:
        return self.concurrency - len(self.in_flight)

    def _backlogged(self) -> bool:
        """Whether claimed requests wait behind the busy slots: sends fired between a
        batch's events go to the provider whatever the free slots, so reading more events
        waits until the queue is short again (a crash leaves fewer sends claimed, unsent)."""
        return len(self.in_flight) >= BACKLOG_FACTOR * self.concurrency

    def _reap(self) -> None:
        for future in [f for f in self.in_flight if f.done()]:
            batch = self.in_flight.pop(future)
            if future.exception() is not None:
                # The ledger failed after the provider call: the sends stay `sending`, and the
                # next start settles them as in doubt, which is exactly what they are.
                log.error("send %s: outcome not recorded: %s", batch[0].key, future.exception())

    def _wait_s(self, now: datetime) -> float:
        wakeup = self.pipeline.next_wakeup()
        if wakeup is None:
            return IDLE_WAIT_S
        if wakeup <= now and self._free_slots() > 0:
            # Due but held by the gate: the watermark moves as events are read (spool) or as
            # other workers acknowledge theirs (Redis).
            return HELD_POLL_S
        wait_s = (wakeup - now).total_seconds() + self.batch_window_s
        if self._free_slots() <= 0:
            # A slot frees when a request is answered, usually well within the idle wait:
            # waiting the whole of it made due sends up to a quarter of a second late.
            wait_s = max(wait_s, SLOT_POLL_S)
        return min(IDLE_WAIT_S, max(wait_s, 0.0))

    # -- timers ------------------------------------------------------------------------------
    def _due(self, name: str, now: datetime, every_s: float, first_s: float = 0.0) -> bool:
        at = self._next.setdefault(name, now + timedelta(seconds=first_s))
        if now < at:
            return False
        self._next[name] = now + timedelta(seconds=every_s)
        return True

    def _run_timers(self, now: datetime) -> None:
        if self._due("watermark", now, WATERMARK_GAUGE_S):
            self._publish_watermark(now, self._due("status", now, WATERMARK_STATUS_S))
            # Read at most once a second: a pause set elsewhere is logged and shown at once.
            pauses = self.pipeline.pauses()
            self.metrics.record_pauses({rule: p.drop for rule, p in pauses.items()})
        if self._due("gauges", now, GAUGE_REFRESH_S):
            self._refresh_gauges()
        if self._due("leases", now, LEASE_CHECK_S):
            self.pipeline.expire_leases()
        if self._due("prune", now, PRUNE_EVERY_S, first_s=PRUNE_EVERY_S):
            pruned = self.ledger.prune(now - timedelta(seconds=self.retention_s))
            log.info("ledger: pruned %d rows older than the retention", pruned)

    def _publish_watermark(self, now: datetime, to_ledger: bool) -> None:
        gate = self.gate(now)
        held = self.pipeline.count_due(gate.cutoff, now) if self._gate_on() else 0
        lag_s = None if gate.watermark is None else max((now - gate.watermark).total_seconds(), 0)
        self.metrics.source_watermark_lag_seconds.set(lag_s if lag_s is not None else 0.0)
        self.metrics.sends_held.set(held)
        if to_ledger:
            with self.ledger.transaction() as txn:
                txn.set_meta(WATERMARK_META + self.source.name, _watermark_json(gate, held, now))

    def _refresh_gauges(self) -> None:
        counts = self.ledger.count_sends((SendState.SCHEDULED, SendState.IN_DOUBT))
        self.metrics.sends_scheduled.set(counts.get(SendState.SCHEDULED, 0))
        self.metrics.sends_in_doubt.set(counts.get(SendState.IN_DOUBT, 0))

    def _restore_dead_letters(self) -> None:
        # A batch's dead letters reach the source's place after its commit: a crash in between
        # left them in the ledger alone. They are the ledger's latest for this source, all
        # stamped with the batch's one commit time.
        mine = [
            d for d in self.ledger.dead_letters(self.batch_size) if d.source == self.source.name
        ]
        last = [d for d in reversed(mine) if d.at == mine[0].at]
        restored = self.source.restore_dead_letters(last)
        if restored:
            log.warning(
                "source %s: %d dead letters written again after a crash", self.source.name, restored
            )


def _latest(current: datetime | None, others: Iterable[datetime | None]) -> datetime | None:
    for other in others:
        if other is not None and (current is None or other > current):
            current = other
    return current


def _watermark_json(gate: Gate, held: int, now: datetime) -> str:
    return json.dumps(
        {
            "at": None if gate.watermark is None else format_ts(gate.watermark),
            "held": held,
            "updated": format_ts(now),
        }
    )
