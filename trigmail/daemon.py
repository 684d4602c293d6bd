"""``trigmail serve``: source → engine → ledger → scheduler → provider, until told to stop.

One thread reads, decides and claims; a small pool calls the provider. Every state change goes
through the ledger, so a crash at any point loses nothing and sends nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from trigmail import faults
from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.errors import LedgerUnavailableError, SourceError
from trigmail.ledger.base import Ledger, SendRecord, SendState
from trigmail.metrics import Metrics
from trigmail.pipeline import Pipeline, RetryPolicy, batches
from trigmail.providers.base import Accepted, Email, Provider
from trigmail.rulestore import RuleStore
from trigmail.scheduler import Scheduler
from trigmail.sources.base import Source, SourceItem
from trigmail.systemd import Notifier, watchdog_interval_s

log = logging.getLogger(__name__)

# The longest the loop waits for events before looking at due sends and signals again.
IDLE_WAIT_S = 0.25
# With every request slot busy and sends due, how often the loop looks for a slot that freed.
SLOT_POLL_S = 0.01
# Back-off after a source or ledger failure, so a broken dependency is not hammered.
FAILURE_BACKOFF_S = 1.0
# How often the ledger's scheduled and in-doubt counts are copied into gauges.
GAUGE_REFRESH_S = 15.0
# How often claims of dead workers (expired leases of a shared ledger) are looked for.
LEASE_CHECK_S = 10.0
# How often rows older than the retention are pruned from the ledger.
PRUNE_EVERY_S = 3600.0

_FINAL_STATES = {
    Reason.DELIVERED: SendState.SENT,
    Reason.IN_DOUBT: SendState.IN_DOUBT,
    Reason.FAILED: SendState.FAILED,
}


def utc_now() -> datetime:
    return datetime.now(UTC)


class MeteredProvider:
    """Wraps a provider to count requests in flight and time each one."""

    def __init__(self, inner: Provider, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.name = inner.name

    def send(self, emails: Sequence[Email]) -> Accepted:
        self.metrics.provider_requests_in_flight.inc()
        started = time.perf_counter()
        try:
            return self.inner.send(emails)
        finally:
            self.metrics.provider_request_seconds.observe(time.perf_counter() - started)
            self.metrics.provider_requests_in_flight.dec()

    def close(self) -> None:
        self.inner.close()


class Daemon:
    """The serve loop.

    Args:
        source: where events come from.
        ledger: where every decision is committed.
        provider: where emails go.
        rules: the rule set in force (reloaded on SIGHUP and on file changes).
        metrics: the Prometheus metrics.
        notifier: systemd's notify socket (a no-op outside systemd).
        concurrency: provider requests in flight at most.
        retry: the backoff of retryable delivery failures.
        shutdown_timeout_s: how long a stop waits for in-flight sends.
        batch_size: the most events decided (and committed) together.
        batch_window_s: how long a due send waits for others to share its provider request.
        retention_s: how long finished sends, seen event ids and dead letters are kept.
        clock: the current time.
    """

    def __init__(
        self,
        source: Source,
        ledger: Ledger,
        provider: Provider,
        rules: RuleStore,
        metrics: Metrics,
        *,
        notifier: Notifier | None = None,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        shutdown_timeout_s: float = 20.0,
        batch_size: int = 500,
        batch_window_s: float = 0.025,
        retention_s: float = 90 * 86_400,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.source = source
        self.ledger = ledger
        self.rules = rules
        self.metrics = metrics
        self.notifier = notifier or Notifier.from_env()
        self.concurrency = concurrency
        self.shutdown_timeout_s = shutdown_timeout_s
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.retention_s = retention_s
        self.clock = clock
        self.pipeline = Pipeline(
            ledger,
            rules,
            MeteredProvider(provider, metrics),
            clock,
            scheduler=Scheduler(),
            retry=retry,
            on_entry=self._observe,
        )
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="trigmail-send")
        self._in_flight: dict[Future[None], list[SendRecord]] = {}
        self._held: list[SourceItem] = []
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._last_tick_s = time.monotonic()
        self._last_gauges_s = 0.0
        self._last_prune_s = time.monotonic()
        self._last_lease_check_s = 0.0
        self._watchdog_s = watchdog_interval_s()
        self._last_watchdog_s = 0.0

    # -- control, safe from signal handlers and other threads ---------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def healthy(self) -> bool | str:
        """Healthy while the loop keeps turning; what ``/healthz`` answers."""
        stalled_s = time.monotonic() - self._last_tick_s
        return True if stalled_s < 30 else f"the serve loop has not turned for {stalled_s:.0f}s"

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until :meth:`request_stop`; then finish in-flight sends (bounded) and return."""
        settled = self.pipeline.start()
        if settled:
            log.warning("serve: %d sends were in flight at the last stop: settled", len(settled))
        with self.ledger.transaction() as txn:
            position = txn.get_position(self.source.name)
        self.source.start(position)
        self._restore_dead_letters()
        self.notifier.ready()
        self.notifier.status(f"serving {self.source.name}, rules {self.rules().version}")
        log.info("serve: ready: source=%s rules=%s", self.source.name, self.rules().version)
        try:
            while not self._stop.is_set():
                self._tick()
        finally:
            self.notifier.stopping()
            self._drain()
            self.source.close()

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

    def _tick(self) -> None:
        self._last_tick_s = time.monotonic()
        self._ping_watchdog()
        if self._reload.is_set():
            self._reload.clear()
            self.notifier.reloading()
            self.rules.reload()
            # A reload also rereads the due sends, so a send an operator scheduled again with
            # `trigmail ledger resolve --not-sent` goes out now rather than within the horizon.
            self.pipeline.reread_due()
            self.notifier.ready()
        self._reap()
        try:
            self._ingest()
            self._fire()
            self._refresh_gauges()
            self._expire_leases()
            self._prune()
        except LedgerUnavailableError as exc:
            log.warning("ledger: unavailable, pausing: %s", exc)
            self._stop.wait(FAILURE_BACKOFF_S)
        except SourceError as exc:
            # Acknowledging or setting aside failed after the commit (Redis went away): the
            # entries stay pending, come again after the reconnect and are known duplicates.
            log.warning("source %s: %s; retrying", self.source.name, exc)
            self._stop.wait(FAILURE_BACKOFF_S)

    def _ingest(self) -> None:
        items = self._held or self._read()
        if not items:
            return
        # Held until committed: if the ledger fails, the same items are decided again.
        self._held = items
        faults.reached(faults.KillPoint.AFTER_READ)
        started = time.perf_counter()
        ingested = self.pipeline.ingest(items, self.source.name)
        self.metrics.ledger_commit_seconds.observe(time.perf_counter() - started)
        self._held = []
        faults.reached(faults.KillPoint.AFTER_COMMIT)
        for rejected in ingested.rejected:
            assert isinstance(rejected.item, SourceItem)
            self.source.dead_letter(rejected.item, rejected.reason, rejected.detail)
        self.source.ack(items)
        self.metrics.events_read.labels(source=self.source.name).inc(len(items))

    def _read(self) -> list[SourceItem]:
        try:
            return self.source.read(self.batch_size, self._wait_s())
        except SourceError as exc:
            log.warning("source %s: %s; retrying", self.source.name, exc)
            self._stop.wait(FAILURE_BACKOFF_S)
            return []

    def _wait_s(self) -> float:
        wakeup = self.pipeline.next_wakeup()
        if wakeup is None:
            return IDLE_WAIT_S
        wait_s = (wakeup - self.clock()).total_seconds() + self.batch_window_s
        if len(self._in_flight) >= self.concurrency:
            # A slot frees when a request is answered, usually well within the idle wait:
            # waiting the whole of it made due sends up to a quarter of a second late.
            wait_s = max(wait_s, SLOT_POLL_S)
        return min(IDLE_WAIT_S, max(wait_s, 0.0))

    def _fire(self) -> None:
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return
        claimed = self.pipeline.fire_due(limit=free * 1000, linger_s=self.batch_window_s)
        if claimed:
            faults.reached(faults.KillPoint.AFTER_CLAIM)
        for batch in batches(claimed):
            future = self._executor.submit(self.pipeline.deliver_batch, batch)
            self._in_flight[future] = batch

    def _reap(self) -> None:
        for future in [f for f in self._in_flight if f.done()]:
            batch = self._in_flight.pop(future)
            if future.exception() is not None:
                # The ledger failed after the provider call: the sends stay `sending`, and the
                # next start settles them as in doubt, which is exactly what they are.
                log.error("send %s: outcome not recorded: %s", batch[0].key, future.exception())

    def _drain(self) -> None:
        self._reap()
        pending = list(self._in_flight)
        if pending:
            log.info("serve: stopping: waiting for %d requests in flight", len(pending))
        deadline_s = time.monotonic() + self.shutdown_timeout_s
        for future in pending:
            remaining_s = max(deadline_s - time.monotonic(), 0.0)
            if future.cancel():
                self.pipeline.release(self._in_flight[future], "stopped before sending")
                continue
            try:
                future.result(timeout=remaining_s)
            except TimeoutError:
                log.error("send %s: still in flight at stop", self._in_flight[future][0].key)
            except Exception as exc:  # logged; the next start settles the send as in doubt
                log.error("send %s: outcome not recorded: %s", self._in_flight[future][0].key, exc)
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("serve: stopped")

    def _expire_leases(self) -> None:
        now_s = time.monotonic()
        if now_s - self._last_lease_check_s < LEASE_CHECK_S:
            return
        self._last_lease_check_s = now_s
        self.pipeline.expire_leases()

    def _prune(self) -> None:
        now_s = time.monotonic()
        if now_s - self._last_prune_s < PRUNE_EVERY_S:
            return
        self._last_prune_s = now_s
        pruned = self.ledger.prune(self.clock() - timedelta(seconds=self.retention_s))
        log.info("ledger: pruned %d rows older than the retention", pruned)

    # -- observability -------------------------------------------------------------------------
    def _ping_watchdog(self) -> None:
        if self._watchdog_s is None:
            return
        now_s = time.monotonic()
        if now_s - self._last_watchdog_s >= self._watchdog_s:
            self._last_watchdog_s = now_s
            self.notifier.watchdog()

    def _refresh_gauges(self) -> None:
        now_s = time.monotonic()
        if now_s - self._last_gauges_s < GAUGE_REFRESH_S:
            return
        self._last_gauges_s = now_s
        counts = self.ledger.status(limit=0).counts
        self.metrics.sends_scheduled.set(counts.get(SendState.SCHEDULED, 0))
        self.metrics.sends_in_doubt.set(counts.get(SendState.IN_DOUBT, 0))

    def _observe(self, entry: LogEntry) -> None:
        """Count and log one decision (called after its commit)."""
        if entry.outcome is Outcome.SENT:
            self.metrics.record_send(entry.rule or "", SendState.SENT)
            if entry.due_at is not None:
                lateness_s = (self.clock() - entry.due_at).total_seconds()
                self.metrics.trigger_to_provider_seconds.observe(max(lateness_s, 0.0))
            log.info("send %s: sent to %s (rule %s)", entry.key, entry.user_id, entry.rule)
            return
        final = _FINAL_STATES.get(entry.reason)
        if entry.outcome is Outcome.DROPPED and final is not None:
            self.metrics.record_send(entry.rule or "", final)
            return
        self.metrics.record_decision(entry.rule, entry.reason)
        if entry.outcome in (Outcome.CANCELLED, Outcome.DROPPED):
            self.metrics.record_send(entry.rule or "", SendState.CANCELLED)
        if entry.outcome is Outcome.DEAD_LETTER:
            self.metrics.record_dead_letter(entry.reason)
        if entry.outcome is not Outcome.SKIPPED and entry.event_id is not None:
            log.info(
                "event %s: %s %s (rule %s, key %s)",
                entry.event_id,
                entry.outcome.value,
                entry.reason.value,
                entry.rule,
                entry.key,
            )
        else:
            log.debug("event %s: skipped %s %s", entry.event_id, entry.reason.value, entry.detail)
