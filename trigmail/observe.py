"""Listeners of the serve pipeline: metrics and log lines for each committed decision, and a
provider wrapper that times requests. The daemon registers them; the pipeline never calls up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.ledger.base import SendState
from trigmail.loglines import RecordMaker
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

# What an operator acts on is logged at these levels whatever ``log.decisions`` says; every
# other decision (scheduled, skipped, cancelled: most events make one) at ``log.decisions``.
_OPERATOR_LEVELS = {
    Outcome.SENT: logging.INFO,
    Outcome.DROPPED: logging.INFO,
    Outcome.FAILED: logging.WARNING,
    Outcome.IN_DOUBT: logging.WARNING,
    Outcome.DEAD_LETTER: logging.WARNING,
}


# Outcomes that are counted as decisions and nothing else, and logged at ``log.decisions``.
_ROUTINE = frozenset({Outcome.SCHEDULED, Outcome.SKIPPED})


def decision_fields(entry: LogEntry) -> dict[str, Any]:
    """The fields of one decision's log record: real fields in ``json``, ``key=value`` in
    ``text`` (the names of ``simulate --format json``)."""
    return {
        "event_id": entry.event_id,
        "user_id": entry.user_id,
        "rule": entry.rule,
        "step": entry.step,
        "key": entry.key,
        "outcome": entry.outcome.value,
        "reason": entry.reason.value,
        **({} if entry.variant is None else {"variant": entry.variant}),
    }


class DecisionObserver:
    """Counts and logs each decision once it is committed (:meth:`observe_all` is the
    pipeline's ``on_entries``): one structured record per decision (:func:`decision_fields`).

    What an operator acts on (sends, drops, failures, doubt, dead letters) is logged at info
    or warning; a scheduled send, a skip or a cancel at ``decisions_level`` (debug unless
    ``log.decisions: info``), so that a busy serve does not write a line per event.
    """

    def __init__(
        self,
        metrics: Metrics,
        clock: Callable[[], datetime],
        decisions_level: int = logging.DEBUG,
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.decisions_level = decisions_level

    def __call__(self, entry: LogEntry) -> None:
        self._count(entry)
        self._log(entry, RecordMaker(log))

    def _count(self, entry: LogEntry) -> None:
        final = _FINAL_STATES.get(entry.outcome)
        if final is not None:
            self.metrics.record_send(entry.rule or "", final, entry.variant)
        if entry.outcome is Outcome.SENT:
            if entry.due_at is not None:
                lateness_s = (self.clock() - entry.due_at).total_seconds()
                self.metrics.trigger_to_provider_seconds.observe(max(lateness_s, 0.0))
        elif entry.outcome not in (Outcome.FAILED, Outcome.IN_DOUBT):
            self.metrics.record_decision(entry.rule, entry.reason)
        if entry.outcome is Outcome.DEAD_LETTER:
            self.metrics.record_dead_letter(entry.reason)

    def observe_all(self, entries: Sequence[LogEntry]) -> None:
        """:meth:`__call__` for each of a batch's entries: the routine decisions (scheduled,
        skipped) counted per rule and reason once per batch, not one counter update each
        (a counter takes a lock), and logged only when their level is on."""
        routine: Counter[tuple[str | None, Reason]] = Counter()
        log_routine = log.isEnabledFor(self.decisions_level)
        records = RecordMaker(log)  # in this thread: its records carry the thread's name
        for entry in entries:
            if entry.outcome in _ROUTINE:
                routine[entry.rule, entry.reason] += 1
                if log_routine:
                    self._log(entry, records)
            else:
                self._count(entry)
                self._log(entry, records)
        for (rule, reason), count in routine.items():
            self.metrics.record_decision(rule, reason, count)

    def _log(self, entry: LogEntry, records: RecordMaker) -> None:
        level = _OPERATOR_LEVELS.get(entry.outcome, self.decisions_level)
        if not log.isEnabledFor(level):
            return  # no work for the routine decisions of a busy serve
        fields = decision_fields(entry)
        if entry.detail:
            fields["detail"] = entry.detail
        # The subject: the send when there is one, else the event, else where it was read.
        subject = (
            f"send {entry.key}"
            if entry.key
            else f"event {entry.event_id}"
            if entry.event_id
            else "event"
        )
        detail = f": {entry.detail}" if entry.detail else ""
        message = f"{subject}: {entry.outcome.value} {entry.reason.value}{detail}"
        # What log.log does, less finding the caller's file and line (sys._getframe walks),
        # which no trigmail format writes, and with a cheaper record (RecordMaker): a line
        # per email sent is the busiest record.
        log.handle(records.make(level, message, fields))


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
