"""Records made by copying a prototype are the records makeRecord makes, and the decision
listener writes one line per entry, each the line it wrote before."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests import logs_reference as reference
from tests.test_logs import applied
from trigmail import logs
from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.loglines import RecordMaker, lines_together
from trigmail.metrics import Metrics
from trigmail.observe import DecisionObserver

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
API_KEY = "SG.fake-key-0123456789.abcdefghijklmnop"
# What differs between two records made at different moments.
_TIMES = {"created", "msecs", "relativeCreated"}


@pytest.fixture(autouse=True)
def no_secrets() -> Iterator[None]:
    logs.clear_secrets()
    yield
    logs.clear_secrets()


def _untimed(record: logging.LogRecord) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in vars(record).items() if k not in _TIMES]


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, 25])
def test_a_made_record_is_the_record_make_record_makes(level: int) -> None:
    log = logging.getLogger("trigmail.daemon")
    extra = {"event_id": "e1", "rule": "cart", "step": 0}
    maker = RecordMaker(log)
    for msg in ("first", "second"):  # the second from the level's prototype
        made = maker.make(level, msg, extra)
        expected = log.makeRecord(log.name, level, "", 0, msg, (), None, extra=extra)
        assert type(made) is logging.LogRecord
        assert _untimed(made) == _untimed(expected)  # the same attributes, in the same order
        assert abs(made.created - expected.created) < 1
        assert made.msecs == int((made.created - int(made.created)) * 1000)
        assert abs(made.relativeCreated - expected.relativeCreated) < 1000


def test_records_are_of_the_thread_that_made_the_maker() -> None:
    made: list[logging.LogRecord] = []

    def make() -> None:
        made.append(RecordMaker(logging.getLogger("trigmail")).make(logging.INFO, "m", {}))

    thread = threading.Thread(target=make, name="sender-3")
    thread.start()
    thread.join()
    assert (made[0].threadName, made[0].thread) == ("sender-3", thread.ident)


def test_an_installed_record_factory_makes_every_record() -> None:
    made: list[str] = []
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        made.append(record.getMessage())
        return record

    logging.setLogRecordFactory(factory)
    try:
        maker = RecordMaker(logging.getLogger("trigmail"))
        maker.make(logging.INFO, "one", {})
        maker.make(logging.INFO, "two", {})
    finally:
        logging.setLogRecordFactory(previous)
    assert made == ["one", "two"]


def _sent(count: int) -> list[LogEntry]:
    return [
        LogEntry(
            T0, f"e{n}", f"u{n}", "welcome", 0, f"welcome:e{n}", Outcome.SENT, Reason.DELIVERED,
            T0 - timedelta(seconds=2), variant="b" if n % 3 == 0 else None,
        )
        for n in range(count)
    ]  # fmt: skip


def _old_line(entry: LogEntry) -> str:
    """The line the listener wrote before its records were copies: makeRecord's record."""
    log = logging.getLogger("trigmail.daemon")
    fields: dict[str, Any] = {
        "event_id": entry.event_id,
        "user_id": entry.user_id,
        "rule": entry.rule,
        "step": entry.step,
        "key": entry.key,
        "outcome": entry.outcome.value,
        "reason": entry.reason.value,
        **({} if entry.variant is None else {"variant": entry.variant}),
    }
    message = f"send {entry.key}: {entry.outcome.value} {entry.reason.value}"
    record = log.makeRecord(log.name, logging.INFO, "", 0, message, (), None, extra=fields)
    return reference.KeyValueFormatter(journald=True).format(record)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_sent_entry_is_one_line_as_before(fmt: logs.LogFormat) -> None:
    stream = io.StringIO()
    logs.register_secret(API_KEY)
    config = logs.logging_config(fmt, "info", stream_is_tty=False, journald=True, stream=stream)
    entries = _sent(1000)
    observer = DecisionObserver(Metrics(process=False), lambda: T0)
    with applied(config):
        for at in range(0, len(entries), 400):  # requests of 400, as the pipeline publishes
            with lines_together():
                observer.observe_all(entries[at : at + 400])
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(entries)  # none lost, none doubled
    if fmt == "text":
        assert lines == [_old_line(entry) for entry in entries]
    else:
        assert all(f'"key": "welcome:e{n}"' in line for n, line in enumerate(lines))
