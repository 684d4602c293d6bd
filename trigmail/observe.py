"""Listeners of the serve pipeline: metrics and log lines for each committed decision, and a
provider wrapper that times requests. The daemon registers them; the pipeline never calls up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from trigmail.decisions import LogEntry, Outcome
from trigmail.ledger.base import SendState
from trigmail.metrics import Metrics
from trigmail.providers.base import Accepted, Email, Provider

log = logging.getLogger("trigmail.daemon")

# The final state a send's outcome stands for, where it has one.
_FINAL_STATES = {
    Outcome.SENT: SendState.SENT,
    Outcome.FAILED: SendState.FAILED,
    Outcome.IN_DOUBT: SendState.IN_DOUBT,
    Outcome.CANCELLED: SendState.CANCELLED,
    Outcome.DROPPED: SendState.CANCELLED,
}

# Decisions made for most events, logged at debug only.
_ROUTINE = (Outcome.SKIPPED, Outcome.SCHEDULED)


class DecisionObserver:
    """Counts and logs each decision once it is committed (the pipeline's ``on_entry``).

    What an operator acts on (failures, doubt, cancels, dead letters) is logged at info or
    warning; a scheduled send, a skip or an email sent at debug (each accepted provider request
    is one info line), so that a busy serve does not write a line per event.
    """

    def __init__(self, metrics: Metrics, clock: Callable[[], datetime]) -> None:
        self.metrics = metrics
        self.clock = clock

    def __call__(self, entry: LogEntry) -> None:
        final = _FINAL_STATES.get(entry.outcome)
        if final is not None:
            self.metrics.record_send(entry.rule or "", final, entry.variant)
        if entry.outcome is Outcome.SENT:
            if entry.due_at is not None:
                lateness_s = (self.clock() - entry.due_at).total_seconds()
                self.metrics.trigger_to_provider_seconds.observe(max(lateness_s, 0.0))
            # One line per email would be a line per event on a busy serve: the pipeline logs
            # each accepted request at info; each email is at debug, and no work when off.
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "send %s: sent to %s (rule %s%s)",
                    entry.key,
                    entry.user_id,
                    entry.rule,
                    "" if entry.variant is None else f", variant {entry.variant}",
                )
            return
        if entry.outcome in (Outcome.FAILED, Outcome.IN_DOUBT):
            return  # the pipeline logs these with their error as it settles them
        self.metrics.record_decision(entry.rule, entry.reason)
        if entry.outcome is Outcome.DEAD_LETTER:
            self.metrics.record_dead_letter(entry.reason)
        # A scheduled send or a skip happens for most events: debug, and no work when off.
        level = logging.DEBUG if entry.outcome in _ROUTINE else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "event %s: %s %s (user %s, rule %s, key %s) %s",
                entry.event_id,
                entry.outcome.value,
                entry.reason.value,
                entry.user_id,
                entry.rule,
                entry.key,
                entry.detail,
            )


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
