"""A batch observed at once counts and logs what its entries observed one by one do, and what
the observer did before it counted a batch at once (a copy of its per-entry code below)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.ledger.base import SendState
from trigmail.metrics import Metrics
from trigmail.observe import DecisionObserver, decision_fields

T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)

_ENTRIES = st.builds(
    LogEntry,
    at=st.just(T0),
    event_id=st.sampled_from([None, "e1", "e2"]),
    user_id=st.sampled_from([None, "ana"]),
    rule=st.sampled_from([None, "promo"]),
    step=st.sampled_from([None, 0, 1]),
    key=st.sampled_from([None, "promo:e1"]),
    outcome=st.sampled_from(list(Outcome)),
    # A few reasons, so that a batch repeats a rule and reason (counted together).
    reason=st.sampled_from([Reason.IMMEDIATE, Reason.NO_RULE, Reason.DELIVERED, Reason.CANCEL_ON]),
    due_at=st.sampled_from([None, T0 - timedelta(seconds=3)]),
    detail=st.sampled_from(["", "why"]),
    variant=st.sampled_from([None, "a"]),
)


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _observe(entries: list[LogEntry], level: int, *, batch: bool) -> tuple[object, list[str]]:
    metrics = Metrics(process=False)
    observer = DecisionObserver(metrics, lambda: T0, level)
    handler = _Records()
    logger = logging.getLogger("trigmail.daemon")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        if batch:
            observer.observe_all(entries)
        else:
            for entry in entries:
                _observed_before(metrics, entry, level)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return _samples(metrics), handler.lines


_FINAL_STATES = {
    Outcome.SENT: SendState.SENT,
    Outcome.FAILED: SendState.FAILED,
    Outcome.IN_DOUBT: SendState.IN_DOUBT,
    Outcome.CANCELLED: SendState.CANCELLED,
    Outcome.DROPPED: SendState.CANCELLED,
}
_OPERATOR_LEVELS = {
    Outcome.SENT: logging.INFO,
    Outcome.DROPPED: logging.INFO,
    Outcome.FAILED: logging.WARNING,
    Outcome.IN_DOUBT: logging.WARNING,
    Outcome.DEAD_LETTER: logging.WARNING,
}


def _observed_before(metrics: Metrics, entry: LogEntry, decisions_level: int) -> None:
    """What ``DecisionObserver.__call__`` did before batches were counted at once (c. 3a81cb7)."""
    final = _FINAL_STATES.get(entry.outcome)
    if final is not None:
        metrics.record_send(entry.rule or "", final, entry.variant)
    if entry.outcome is Outcome.SENT:
        if entry.due_at is not None:
            lateness_s = (T0 - entry.due_at).total_seconds()
            metrics.trigger_to_provider_seconds.observe(max(lateness_s, 0.0))
    elif entry.outcome not in (Outcome.FAILED, Outcome.IN_DOUBT):
        metrics.record_decision(entry.rule, entry.reason)
    if entry.outcome is Outcome.DEAD_LETTER:
        metrics.record_dead_letter(entry.reason)
    level = _OPERATOR_LEVELS.get(entry.outcome, decisions_level)
    log = logging.getLogger("trigmail.daemon")
    if not log.isEnabledFor(level):
        return
    fields = decision_fields(entry)
    if entry.detail:
        fields["detail"] = entry.detail
    subject = (
        f"send {entry.key}"
        if entry.key
        else f"event {entry.event_id}"
        if entry.event_id
        else "event"
    )
    detail = f": {entry.detail}" if entry.detail else ""
    message = f"{subject}: {entry.outcome.value} {entry.reason.value}{detail}"
    log.handle(log.makeRecord(log.name, level, "", 0, message, (), None, extra=fields))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = [(k, v) for k, v in record.__dict__.items() if k in _FIELDS]  # in order
        self.lines.append(f"{record.levelno} {record.getMessage()} {fields}")


_FIELDS = {"event_id", "user_id", "rule", "step", "key", "outcome", "reason", "variant", "detail"}


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_ENTRIES, max_size=12), st.sampled_from([logging.DEBUG, logging.INFO]))
def test_a_batch_counts_and_logs_as_its_entries_one_by_one(
    entries: list[LogEntry], level: int
) -> None:
    assert _observe(entries, level, batch=True) == _observe(entries, level, batch=False)


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
def test_routine_decisions_of_a_batch_are_counted_and_logged_at_their_level(level: int) -> None:
    entries = [
        LogEntry(T0, "e1", "ana", "welcome", 0, "w:e1", Outcome.SCHEDULED, Reason.IMMEDIATE),
        LogEntry(T0, "e2", "ana", "welcome", 0, "w:e2", Outcome.SCHEDULED, Reason.IMMEDIATE),
        LogEntry(T0, "e3", "bo", None, None, None, Outcome.SKIPPED, Reason.NO_RULE),
    ]
    samples, lines = _observe(entries, level, batch=True)
    assert isinstance(samples, dict)
    labels = (("reason", "immediate"), ("rule", "welcome"))
    assert samples["trigmail_decisions_total", labels] == 2
    assert len(lines) == (3 if level == logging.INFO else 0)
