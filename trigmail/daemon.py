"""``trigmail serve``: source → engine → ledger → scheduler → provider, until told to stop.

One thread turns the :class:`~trigmail.worker.Worker` (read, decide, claim); a small pool calls
the provider. Every state change goes through the ledger, so a crash at any point loses
nothing and sends nothing twice.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from trigmail.delivery import RetryPolicy
from trigmail.errors import LedgerUnavailableError, SourceError
from trigmail.ledger.base import Ledger
from trigmail.metrics import Metrics
from trigmail.observe import DecisionObserver, MeteredProvider
from trigmail.pipeline import Pipeline
from trigmail.providers.base import Provider
from trigmail.rulestore import RuleStore
from trigmail.scheduler import Scheduler
from trigmail.sources.base import Source
from trigmail.systemd import Notifier, watchdog_interval_s
from trigmail.worker import Worker

log = logging.getLogger(__name__)

# Back-off after a source or ledger failure, so a broken dependency is not hammered.
FAILURE_BACKOFF_S = 1.0
# Allocations between two collections of the youngest generation (Python's default: 700). An
# ingested event allocates a few hundred objects that reference counting frees, so the default
# collected every few events, for nothing: bench_ingest 57-58 -> 52 us of CPU per event, where
# no collection at all gives 51.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Set the process's collector for serving (:data:`GC_YOUNG_THRESHOLD`); the older
    generations keep their thresholds, so a cycle is still collected, later."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """The serve process around a :class:`~trigmail.worker.Worker`: the real clock, the
    sending threads, signals, reloads, systemd and health.

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
        max_hold_s: how long the event-order gate may hold a due send; ``0`` turns it off.
        retention_s: how long finished sends, seen event ids and dead letters are kept.
        clock: the current time.
        reconcile: a periodic chore given the time, ``True`` when it scheduled sends again
            (the webhook's :class:`~trigmail.webhook.reconcile.Reconciler`).
        decisions_level: the log level of routine decisions (``log.decisions``).
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
        max_hold_s: float = 300.0,
        retention_s: float = 90 * 86_400,
        clock: Callable[[], datetime] = utc_now,
        reconcile: Callable[[datetime], bool] | None = None,
        decisions_level: int = logging.DEBUG,
    ) -> None:
        self.source = source
        self.ledger = ledger
        self.rules = rules
        self.metrics = metrics
        self.notifier = notifier or Notifier.from_env()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.clock = clock
        self._reconcile = reconcile
        self.pipeline = Pipeline(
            ledger,
            rules,
            MeteredProvider(provider, metrics),
            clock,
            scheduler=Scheduler(),
            retry=retry,
            on_entries=DecisionObserver(metrics, clock, decisions_level).observe_all,
        )
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="trigmail-send")
        self.worker = Worker(
            source,
            self.pipeline,
            self._executor,
            metrics,
            concurrency=concurrency,
            batch_size=batch_size,
            batch_window_s=batch_window_s,
            max_hold_s=max_hold_s,
            retention_s=retention_s,
        )
        self._stop = threading.Event()
        self._reload = threading.Event()
        # Set once the ledger is open, in-flight sends are settled and the source is tailed.
        self.started = threading.Event()
        # Why the ledger cannot commit, while it cannot (read by /healthz from another thread).
        self._ledger_problem: str | None = None
        self._last_tick_s = time.monotonic()
        self._watchdog_s = watchdog_interval_s()
        self._last_watchdog_s = 0.0

    # -- control, safe from signal handlers and other threads ---------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def healthy(self) -> bool | str:
        """Healthy while the loop keeps turning and the ledger commits; what ``/healthz``
        answers (with the source's own health, see :mod:`trigmail.service`)."""
        stalled_s = time.monotonic() - self._last_tick_s
        if stalled_s >= 30:
            return f"the serve loop has not turned for {stalled_s:.0f}s"
        problem = self._ledger_problem
        return True if problem is None else f"the ledger cannot commit: {problem}"

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until :meth:`request_stop`; then finish in-flight sends (bounded) and return."""
        settled = self.worker.start()
        if settled:
            log.warning("serve: %d sends were in flight at the last stop: settled", len(settled))
        # Started before it is announced: whoever reads READY=1 or the ready line and then asks
        # /readyz must hear "ok", not "starting".
        self.started.set()
        self.notifier.ready()
        self.notifier.status(f"serving {self.source.name}, rules {self.rules().version}")
        log.info("serve: ready: source=%s rules=%s", self.source.name, self.rules().version)
        try:
            while not self._stop.is_set():
                self._tick()
        finally:
            self.notifier.stopping()
            self.worker.drain(self.shutdown_timeout_s)
            self._executor.shutdown(wait=False, cancel_futures=True)
            log.info("serve: stopped")
            self.source.close()

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
        try:
            wait_s = self.worker.step(self.clock())
            # After the step: a sweep that waits on a locked ledger must not keep events from
            # being read.
            if self._reconcile is not None and self._reconcile(self.clock()):
                # Sends scheduled again (on_doubt: verify) go out now, not within the horizon.
                self.pipeline.reread_due()
                wait_s = 0.0
            self._ledger_problem = None
            if wait_s > 0 and not self._stop.is_set():
                self.worker.wait_for_events(wait_s)
        except LedgerUnavailableError as exc:
            log.warning("ledger: unavailable, pausing: %s", exc)
            self._ledger_problem = str(exc)
            self._stop.wait(FAILURE_BACKOFF_S)
        except SourceError as exc:
            # Reading, acknowledging or setting aside failed (Redis went away): entries not
            # acknowledged come again after the reconnect and are known duplicates.
            log.warning("source %s: %s; retrying", self.source.name, exc)
            self._stop.wait(FAILURE_BACKOFF_S)

    # -- observability -------------------------------------------------------------------------
    def _ping_watchdog(self) -> None:
        if self._watchdog_s is None:
            return
        now_s = time.monotonic()
        if now_s - self._last_watchdog_s >= self._watchdog_s:
            self._last_watchdog_s = now_s
            self.notifier.watchdog()
