"""A batch observed at once counts and logs what its entries observed one by one do."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.metrics import Metrics
from trigmail.observe import DecisionObserver

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
                observer(entry)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return _samples(metrics), handler.lines


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in record.__dict__.items() if k in _FIELDS}
        self.lines.append(f"{record.levelno} {record.getMessage()} {sorted(fields.items())}")


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
