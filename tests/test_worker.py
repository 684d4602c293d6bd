"""The serve loop's policy in process: ``Worker.step(now)`` on a virtual clock.

Real parts: the pipeline, a MemoryLedger, the in-memory source shipped in the package, a
RecordingProvider and the rules loader; an executor that runs each request at once stands in
for the thread pool. Every guarantee is judged in the order the events entered the source.
"""

from __future__ import annotations

import json
import logging
import random
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from trigmail.cli.status import watermark_json
from trigmail.decisions import LogEntry, Outcome
from trigmail.events import format_ts
from trigmail.ledger.base import Ledger
from trigmail.ledger.memory import MemoryLedger
from trigmail.metrics import Metrics
from trigmail.pipeline import Pipeline
from trigmail.providers.recording import RecordingProvider
from trigmail.rules.loader import parse_rules
from trigmail.scheduler import Scheduler
from trigmail.sends import SendState
from trigmail.simulate import Simulation, VirtualClock
from trigmail.sources.memory import MemorySource
from trigmail.worker import GAUGE_REFRESH_S, Worker

P = ParamSpec("P")
R = TypeVar("R")

T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
DELAY = timedelta(seconds=2)
RULES = parse_rules(
    textwrap.dedent(
        """
        rules:
          - id: cart
            on: cart_abandoned
            delay: 2s
            cancel_on: [order_completed]
            send: {template: d-cart}
          - id: welcome
            on: user_signup
            send: {template: d-welcome}
        """
    )
).rule_set()


class InlineExecutor(Executor):
    """Runs each submitted call at once, in the caller's thread."""

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        future: Future[R] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@dataclass
class Line:
    """One event as its producer wrote it."""

    id: str
    event: str
    user_id: str
    ts: datetime

    def data(self) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "event": self.event,
            "user_id": self.user_id,
            "email": f"{self.user_id}@example.com",
            "ts": format_ts(self.ts),
        }
        return json.dumps(obj).encode()


def workload(seed: int, count: int, users: int = 40, start: datetime = T0) -> list[Line]:
    """Signups, carts and orders of a few users, a few milliseconds apart."""
    rng = random.Random(seed)
    lines, ts = [], start
    for n in range(count):
        ts += timedelta(milliseconds=rng.randrange(1, 400))
        kind = rng.choice(["user_signup", "cart_abandoned", "cart_abandoned", "order_completed"])
        lines.append(Line(f"e{n}", kind, f"u{rng.randrange(users)}", ts))
    return lines


class Served:
    """A worker on a virtual clock, fed through a memory source."""

    def __init__(
        self,
        start: datetime,
        *,
        max_hold_s: float = 300.0,
        batch_size: int = 50,
        ledger: Callable[[VirtualClock], Ledger] | None = None,
    ):
        self.clock = VirtualClock(start)
        self.ledger = MemoryLedger(clock=self.clock) if ledger is None else ledger(self.clock)
        self.provider = RecordingProvider()
        self.entries: list[LogEntry] = []
        self.source = MemorySource(self.clock)
        self.metrics = Metrics(CollectorRegistry(), process=False)
        self.pipeline = Pipeline(
            self.ledger,
            lambda: RULES,
            self.provider,
            self.clock,
            scheduler=Scheduler(),
            on_entries=self.entries.extend,
        )
        self.worker = Worker(
            self.source,
            self.pipeline,
            InlineExecutor(),
            self.metrics,
            batch_size=batch_size,
            max_hold_s=max_hold_s,
        )
        self.worker.start()

    def turn(self, by: timedelta = timedelta(0)) -> float:
        self.clock.advance(self.clock.now + by)
        return self.worker.step(self.clock.now)

    def run_until_idle(self, limit: int = 10_000) -> None:
        """Step, moving the clock on by what each step asks to wait, until nothing is left."""
        for _ in range(limit):
            wait_s = self.turn()
            with self.ledger.transaction() as txn:
                pending = txn.next_due_at()
            if pending is None and not self.source.unread() and wait_s > 0:
                return
            self.clock.advance(self.clock.now + timedelta(seconds=max(wait_s, 0.001)))
        raise AssertionError("the worker never went idle")

    def sent_keys(self) -> set[str]:
        return {email.key for email in self.provider.sent}


def metric(served: Served, name: str) -> float | None:
    return served.metrics.registry.get_sample_value(name)


def simulated_sent(lines: list[Line]) -> set[str]:
    entries: list[LogEntry] = []
    Simulation(RULES, entries.append).run(line.data() for line in lines)
    return {e.key for e in entries if e.outcome is Outcome.SENT and e.key is not None}


def wrong_reminders(lines: list[Line], sent: set[str]) -> list[str]:
    """Reminders sent although the user's order entered before the reminder was due."""
    wrong = []
    for n, line in enumerate(lines):
        if line.event != "cart_abandoned" or f"cart:{line.id}" not in sent:
            continue
        due = line.ts + DELAY
        if any(
            later.user_id == line.user_id and later.event == "order_completed" and later.ts < due
            for later in lines[n + 1 :]
        ):
            wrong.append(line.id)
    return wrong


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="trigmail.worker"):
        yield caplog


def test_a_backlog_makes_exactly_the_sends_simulate_makes() -> None:
    lines = workload(seed=1, count=600)
    # Written while serve was down: an hour later, everything is long due.
    served = Served(T0 + timedelta(hours=1))
    for line in lines:
        served.source.put(line.data(), entered_at=line.ts)
    served.run_until_idle()
    sent = served.sent_keys()
    assert sent == simulated_sent(lines)
    assert wrong_reminders(lines, sent) == []
    cancelled = [e for e in served.entries if e.outcome is Outcome.CANCELLED]
    assert cancelled, "the workload must exercise cancels"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), batch_size=st.sampled_from([1, 7, 50, 500]))
def test_any_backlog_matches_simulate(seed: int, batch_size: int) -> None:
    lines = workload(seed, count=120, users=8)
    served = Served(T0 + timedelta(minutes=30), batch_size=batch_size)
    for line in lines:
        served.source.put(line.data(), entered_at=line.ts)
    served.run_until_idle()
    assert served.sent_keys() == simulated_sent(lines)


def test_a_burst_into_a_running_worker_sends_no_wrong_reminder() -> None:
    lines = workload(seed=2, count=800, start=T0)
    served = Served(T0)
    # Events arrive as written; the worker runs behind, a step now and then.
    for n, line in enumerate(lines):
        served.clock.advance(line.ts)
        served.source.put(line.data())
        if n % 97 == 0:
            served.turn()
    served.run_until_idle()
    sent = served.sent_keys()
    assert wrong_reminders(lines, sent) == []
    assert any(key.startswith("cart:") for key in sent)


class StuckSource(MemorySource):
    """A shared queue whose watermark another (dead) consumer holds at ``stuck_at``."""

    def __init__(self, clock: VirtualClock, stuck_at: datetime) -> None:
        super().__init__(clock, ordered=False)
        self.stuck_at = stuck_at

    def watermark(self) -> datetime | None:
        return min(self.stuck_at, super().watermark() or self.stuck_at)


def stuck(served: Served, at: datetime) -> StuckSource:
    source = StuckSource(served.clock, at)
    served.worker.source = served.source = source
    source.start(None)
    return source


def cart(event_id: str, user: str, ts: datetime) -> bytes:
    return Line(event_id, "cart_abandoned", user, ts).data()


def order(event_id: str, user: str, ts: datetime) -> bytes:
    return Line(event_id, "order_completed", user, ts).data()


def test_a_held_send_waits_for_the_watermark(caplog_info: pytest.LogCaptureFixture) -> None:
    served = Served(T0, max_hold_s=60)
    source = stuck(served, T0)
    source.put(cart("c1", "ana", T0))
    served.turn()
    served.turn(DELAY + timedelta(seconds=1))
    served.turn(timedelta(seconds=30))
    assert served.sent_keys() == set()
    source.stuck_at = T0 + timedelta(seconds=5)  # the dead consumer's entry is decided
    served.turn()
    assert served.sent_keys() == {"cart:c1"}
    assert metric(served, "trigmail_sends_fired_past_watermark_total") == 0
    assert "past the watermark" not in caplog_info.text


def test_a_cancel_read_before_a_late_fire_cancels() -> None:
    served = Served(T0, max_hold_s=60)
    source = stuck(served, T0)
    source.put(cart("c1", "ana", T0))
    served.turn()
    # The order came after the reminder was due, but while it was held: it still cancels.
    served.clock.advance(T0 + DELAY + timedelta(seconds=5))
    source.put(order("o1", "ana", served.clock.now))
    served.turn()
    source.stuck_at = served.clock.now
    served.turn(timedelta(seconds=1))
    assert served.sent_keys() == set()
    assert served.ledger.get_send("cart:c1") is not None
    assert served.ledger.get_send("cart:c1").state.value == "cancelled"  # type: ignore[union-attr]


def test_past_max_hold_a_held_send_fires_counted_and_logged_once(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    served = Served(T0, max_hold_s=60)
    source = stuck(served, T0)
    source.put(cart("c1", "ana", T0))
    source.put(cart("c2", "bob", T0))
    served.turn()
    served.turn(timedelta(seconds=59))
    assert served.sent_keys() == set()
    served.turn(timedelta(seconds=4))  # the carts were due 61 s ago: past max_hold
    assert served.sent_keys() == {"cart:c1", "cart:c2"}
    assert metric(served, "trigmail_sends_fired_past_watermark_total") == 2
    source.put(cart("c3", "eve", served.clock.now))
    served.turn(timedelta(seconds=70))
    assert "cart:c3" in served.sent_keys()
    assert caplog_info.text.count("past the watermark") == 1


def test_a_backlog_older_than_max_hold_is_still_decided_in_order() -> None:
    # The outage lasted longer than max_hold: the backlog's sends are long overdue, yet they
    # are held until the events before their due time are decided.
    lines = workload(seed=3, count=300)
    served = Served(T0 + timedelta(hours=2), max_hold_s=60)
    for line in lines:
        served.source.put(line.data(), entered_at=line.ts)
    served.run_until_idle()
    assert served.sent_keys() == simulated_sent(lines)
    assert metric(served, "trigmail_sends_fired_past_watermark_total") == 0


def test_max_hold_zero_turns_the_gate_off() -> None:
    served = Served(T0, max_hold_s=0)
    source = stuck(served, T0 - timedelta(hours=1))
    source.put(cart("c1", "ana", T0))
    served.turn()
    served.turn(DELAY + timedelta(seconds=1))
    assert served.sent_keys() == {"cart:c1"}
    assert metric(served, "trigmail_sends_fired_past_watermark_total") == 0


def test_the_watermark_is_published_for_status() -> None:
    served = Served(T0)
    source = stuck(served, T0 - timedelta(seconds=30))
    source.put(cart("c1", "ana", T0 - timedelta(seconds=10)))
    served.turn()
    served.turn(timedelta(seconds=5))  # the ledger copy is written every 5 s
    stored = served.ledger.get_meta(f"watermark:{source.name}")
    assert stored is not None
    published = json.loads(stored)
    assert published["at"] == format_ts(T0 - timedelta(seconds=30))
    assert published["held"] == 1
    # what `trigmail status --format json` shows of it, read a minute later
    shown = watermark_json(stored, source.name, served.clock.now + timedelta(minutes=1))
    assert shown == {
        "source": "memory",
        "at": format_ts(T0 - timedelta(seconds=30)),
        "lag_s": 95.0,
        "held": 1,
        "updated": format_ts(served.clock.now),
    }
    assert watermark_json("not json", source.name, served.clock.now) is None
    assert metric(served, "trigmail_source_watermark_lag_seconds") == 35


def test_the_gauges_count_the_scheduled_and_in_doubt_sends_every_refresh() -> None:
    served = Served(T0)
    served.source.put(cart("c1", "ana", T0 + timedelta(hours=1)))
    served.source.put(cart("c2", "bob", T0 + timedelta(hours=1)))
    served.turn()
    served.turn(timedelta(seconds=GAUGE_REFRESH_S))
    assert metric(served, "trigmail_sends_scheduled") == 2
    with served.ledger.transaction() as txn:
        txn.claim(["cart:c1"], served.clock.now)
        txn.finish(["cart:c1"], SendState.IN_DOUBT, served.clock.now)
    served.turn(timedelta(seconds=GAUGE_REFRESH_S))
    assert metric(served, "trigmail_sends_scheduled") == 1
    assert metric(served, "trigmail_sends_in_doubt") == 1
