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

# An outcome's value keys these tables: an enum member hashes in Python, its value in C, and a
# backlog looks up each of its thousands of sent entries.

# The final state a send's outcome stands for, where it has one.
_FINAL_STATES = {
    Outcome.SENT.value: SendState.SENT,
    Outcome.FAILED.value: SendState.FAILED,
    Outcome.IN_DOUBT.value: SendState.IN_DOUBT,
    Outcome.CANCELLED.value: SendState.CANCELLED,
    Outcome.DROPPED.value: SendState.CANCELLED,
}

# What an operator acts on is logged at these levels whatever ``log.decisions`` says; every
# other decision (scheduled, skipped, cancelled: most events make one) at ``log.decisions``.
_OPERATOR_LEVELS = {
    Outcome.SENT.value: logging.INFO,
    Outcome.DROPPED.value: logging.INFO,
    Outcome.FAILED.value: logging.WARNING,
    Outcome.IN_DOUBT.value: logging.WARNING,
    Outcome.DEAD_LETTER.value: logging.WARNING,
}


# Outcomes that are counted as decisions and nothing else, and logged at ``log.decisions``.
_ROUTINE = frozenset({Outcome.SCHEDULED.value, Outcome.SKIPPED.value})
# Final outcomes that are not decisions of the engine's (the provider's answer).
_NOT_DECISIONS = frozenset({Outcome.SENT.value, Outcome.FAILED.value, Outcome.IN_DOUBT.value})
_SENT = Outcome.SENT.value


def decision_fields(entry: LogEntry) -> dict[str, Any]:
    """The fields of one decision's log record: real fields in ``json``, ``key=value`` in
    ``text`` (the names of ``simulate --format json``)."""
    fields: dict[str, Any] = {
        "event_id": entry.event_id,
        "user_id": entry.user_id,
        "rule": entry.rule,
        "step": entry.step,
        "key": entry.key,
        "outcome": entry.outcome._value_,  # the str: .value is a property run in Python
        "reason": entry.reason._value_,
    }
    if entry.variant is not None:
        fields["variant"] = entry.variant
    return fields


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
        self.observe_all((entry,))

    def observe_all(self, entries: Sequence[LogEntry]) -> None:
        """Count and log a commit's entries (or a request's): each counter updated once per
        label set of the batch, not once per entry (a counter takes a lock), every counter
        before the first line, and a line only where its level is on."""
        routine: Counter[tuple[str | None, Reason]] = Counter()
        finals: Counter[tuple[str, str, str | None]] = Counter()
        due: list[datetime] = []
        logged: list[tuple[int, LogEntry]] = []
        enabled: dict[int, bool] = {}
        for entry in entries:
            outcome = entry.outcome._value_
            if outcome in _ROUTINE:
                routine[entry.rule, entry.reason] += 1
                level = self.decisions_level
            elif outcome == _SENT:
                finals[entry.rule or "", outcome, entry.variant] += 1
                if entry.due_at is not None:
                    due.append(entry.due_at)
                level = logging.INFO
            else:
                self._count(entry, outcome, finals)
                level = _OPERATOR_LEVELS.get(outcome, self.decisions_level)
            on = enabled.get(level)
            if on is None:
                on = enabled[level] = log.isEnabledFor(level)
            if on:  # else no work for the routine decisions of a busy serve
                logged.append((level, entry))
        self._add(routine, finals, due)
        if logged:
            records = RecordMaker(log)  # in this thread: its records carry the thread's name
            for level, entry in logged:
                self._log(entry, level, records)

    def _add(
        self,
        routine: Counter[tuple[str | None, Reason]],
        finals: Counter[tuple[str, str, str | None]],
        due: list[datetime],
    ) -> None:
        """Add a batch's counts to the metrics."""
        if due:
            now = self.clock()  # one reading for a batch's sends: they were answered together
            for due_at in due:
                lateness_s = (now - due_at).total_seconds()
                self.metrics.trigger_to_provider_seconds.observe(max(lateness_s, 0.0))
        for (rule_id, outcome, variant), count in finals.items():
            self.metrics.record_send(rule_id, _FINAL_STATES[outcome], variant, count)
        for (rule, reason), count in routine.items():
            self.metrics.record_decision(rule, reason, count)

    def _count(
        self, entry: LogEntry, outcome: str, finals: Counter[tuple[str, str, str | None]]
    ) -> None:
        """Count an entry neither routine nor sent (a drop, cancel, failure, doubt, dead letter)."""
        if outcome in _FINAL_STATES:
            finals[entry.rule or "", outcome, entry.variant] += 1
        if outcome not in _NOT_DECISIONS:
            self.metrics.record_decision(entry.rule, entry.reason)
        if outcome == Outcome.DEAD_LETTER.value:
            self.metrics.record_dead_letter(entry.reason)

    @staticmethod
    def _log(entry: LogEntry, level: int, records: RecordMaker) -> None:
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
        message = f"{subject}: {fields['outcome']} {fields['reason']}{detail}"
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
