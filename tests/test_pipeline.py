"""The shell shared by serve and simulate: ingest, fire_due, deliver, failures, recovery.

Real parts: MemoryLedger (and one SQLite file), RecordingProvider, a VirtualClock, seeded rng.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.pipeline_harness import RULES, SEED, T0, Harness, item, line
from trigmail.decisions import Outcome, Reason
from trigmail.delivery import RetryPolicy
from trigmail.errors import (
    DeliveryError,
    InDoubtDeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from trigmail.ledger.base import SendState
from trigmail.ledger.memory import MemoryLedger
from trigmail.ledger.sqlite import SqliteLedger
from trigmail.pipeline import Pipeline
from trigmail.providers.recording import RecordingProvider
from trigmail.rules.loader import parse_rules
from trigmail.rules.model import RuleSet
from trigmail.scheduler import Scheduler
from trigmail.simulate import VirtualClock


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


@pytest.fixture
def h(clock: VirtualClock) -> Iterator[Harness]:
    ledger = MemoryLedger(clock=clock)
    yield Harness(ledger, clock)
    ledger.close()


def test_ingest_fire_deliver_sent(h: Harness) -> None:
    h.pipeline.start()
    result = h.pipeline.ingest([item(line("user_signup", "e1"))], "spool")
    assert [send.key for send in result.scheduled] == ["welcome:u1"]
    assert result.rejected == []
    claimed = h.pipeline.fire_due()
    assert [send.key for send in claimed] == ["welcome:u1"]
    # sending is committed before the provider is called
    assert h.state("welcome:u1") is SendState.SENDING
    assert h.provider.calls == []
    h.pipeline.deliver(claimed)
    sent = h.ledger.get_send("welcome:u1")
    assert sent is not None
    assert (sent.state, sent.message_id, sent.attempts) == (SendState.SENT, "recording-1", 1)
    assert [(e.key, e.to, dict(e.payload.data)) for e in h.provider.sent] == [
        ("welcome:u1", "u1@example.com", {"name": "Ana"})
    ]
    assert h.outcomes() == [
        ("scheduled", "immediate", "welcome:u1"),
        ("sent", "delivered", "welcome:u1"),
    ]
    # the decision log and the source position were committed with the decisions
    logged = h.ledger.decision_log()
    assert [(e.outcome, e.reason) for e in logged] == [
        (Outcome.SENT, Reason.DELIVERED),
        (Outcome.SCHEDULED, Reason.IMMEDIATE),
    ]
    with h.ledger.transaction() as txn:
        assert txn.get_position("spool") == "1"


def test_redelivered_event_is_not_sent_twice(h: Harness) -> None:
    h.pipeline.ingest([item(line("user_signup", "e1"))])
    h.run()
    h.pipeline.ingest([item(line("user_signup", "e1"), 2), item(line("user_signup", "e2"), 3)])
    h.run(T0 + timedelta(days=1))
    assert [e.key for e in h.provider.sent] == ["welcome:u1"]
    assert h.outcomes()[-2:] == [
        ("skipped", "duplicate_event", None),
        ("skipped", "duplicate_key", "welcome:u1"),
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # not JSON
        (b"{not json", "invalid_json"),
        # JSON but not an object
        (b"[1, 2]", "not_object"),
        # no user_id
        (b'{"event": "user_signup"}', "missing_field"),
        # a ts that is not RFC 3339
        (b'{"event": "user_signup", "user_id": "u1", "ts": "yesterday"}', "bad_ts"),
    ],
)
def test_bad_event_goes_to_dead_letters(h: Harness, data: bytes, reason: str) -> None:
    result = h.pipeline.ingest([item(data, 7)], "spool")
    assert [(r.reason, r.item.ref) for r in result.rejected] == [(reason, "events:7")]
    (letter,) = h.ledger.dead_letters()
    assert (letter.reason, letter.position, letter.source) == (reason, "events:7", "spool")
    assert letter.raw == data.decode()
    assert h.outcomes() == [("dead_letter", reason, None)]
    # a bad line still moves the position on: it is never read again
    with h.ledger.transaction() as txn:
        assert txn.get_position("spool") == "7"


def test_template_error_is_set_aside(h: Harness) -> None:
    result = h.pipeline.ingest([item(line("user_signup", "e1", user={}))], "spool")
    assert [r.reason for r in result.rejected] == ["template_error"]
    assert "user.first_name" in result.rejected[0].detail
    assert result.scheduled == []
    assert h.ledger.get_send("welcome:u1") is None
    assert [d.reason for d in h.ledger.dead_letters()] == ["template_error"]
    assert h.outcomes() == [("dead_letter", "template_error", None)]


def test_retryable_error_reschedules_with_backoff(h: Harness) -> None:
    h.pipeline.ingest([item(line("user_signup", "e1"))])
    h.provider.fail_next(RetryableDeliveryError("503 service unavailable"))
    h.run()
    send = h.ledger.get_send("welcome:u1")
    assert send is not None
    expected_s = RetryPolicy().backoff_s(1, None, random.Random(SEED).random())
    assert (send.state, send.attempts) == (SendState.SCHEDULED, 1)
    assert send.due_at == T0 + timedelta(seconds=expected_s)
    assert 0.5 <= expected_s <= 1.0
    assert "503" in (send.last_error or "")
    # not due yet: nothing happens
    h.run(send.due_at - timedelta(microseconds=1))
    assert len(h.provider.calls) == 1
    h.run(send.due_at)
    assert h.state("welcome:u1") is SendState.SENT
    assert [len(call) for call in h.provider.calls] == [1, 1]
    assert len(h.provider.sent) == 1


def test_retry_after_hint_is_honoured(h: Harness) -> None:
    h.pipeline.ingest([item(line("user_signup", "e1"))])
    h.provider.fail_next(RetryableDeliveryError("429 too many requests", retry_after_s=120))
    h.run()
    send = h.ledger.get_send("welcome:u1")
    assert send is not None
    assert send.due_at == T0 + timedelta(seconds=120)


@pytest.mark.parametrize(
    ("event", "key", "error", "state", "reason", "calls"),
    [
        # in doubt under on_doubt skip: in_doubt, never sent again
        (
            "user_signup",
            "welcome:u1",
            InDoubtDeliveryError("read timeout"),
            "in_doubt",
            "in_doubt",
            1,
        ),
        # in doubt under on_doubt resend: rescheduled and sent again
        ("order_completed", "receipt:e1", InDoubtDeliveryError("read timeout"), "sent", None, 2),
        # a 4xx other than 429: failed, no retry
        (
            "user_signup",
            "welcome:u1",
            PermanentDeliveryError("400 bad request"),
            "failed",
            "failed",
            1,
        ),
    ],
)
def test_delivery_failures(
    h: Harness,
    event: str,
    key: str,
    error: DeliveryError,
    state: str,
    reason: str | None,
    calls: int,
) -> None:
    h.pipeline.ingest([item(line(event, "e1"))])
    h.provider.fail_next(error)
    h.run()
    for day in range(1, 4):
        h.run(T0 + timedelta(days=day))
    assert h.state(key) == state
    assert len(h.provider.calls) == calls
    assert all(email.key == key for call in h.provider.calls for email in call)
    # a failed or in-doubt send is its own outcome, never "dropped"
    settled = [(o, r) for o, r, _ in h.outcomes() if o in ("dropped", "failed", "in_doubt")]
    assert settled == ([] if reason is None else [(reason, reason)])


def test_max_attempts_then_failed(clock: VirtualClock) -> None:
    h = Harness(MemoryLedger(clock=clock), clock, RetryPolicy(max_attempts=2))
    h.pipeline.ingest([item(line("user_signup", "e1"))])
    h.provider.fail_next(RetryableDeliveryError("connection refused"), times=5)
    for minute in range(10):
        h.run(T0 + timedelta(minutes=minute))
    send = h.ledger.get_send("welcome:u1")
    assert send is not None
    assert (send.state, send.attempts) == (SendState.FAILED, 2)
    assert "gave up after 2 attempts" in (send.last_error or "")
    assert len(h.provider.calls) == 2


@pytest.mark.parametrize(
    ("event", "key", "after_recover", "final", "sent"),
    [
        # on_doubt skip: a crash while sending leaves it in doubt, never resent
        ("user_signup", "welcome:u1", SendState.IN_DOUBT, SendState.IN_DOUBT, 0),
        # on_doubt resend: rescheduled, then sent by the restarted pipeline
        ("order_completed", "receipt:e1", SendState.SCHEDULED, SendState.SENT, 1),
    ],
)
def test_recover_after_crash_while_sending(
    clock: VirtualClock,
    event: str,
    key: str,
    after_recover: SendState,
    final: SendState,
    sent: int,
) -> None:
    ledger = MemoryLedger(clock=clock)
    crashed = Harness(ledger, clock)
    crashed.pipeline.ingest([item(line(event, "e1"))])
    assert [s.key for s in crashed.pipeline.fire_due()] == [key]
    # the process dies here: claimed (sending) but never handed to the provider
    assert crashed.state(key) is SendState.SENDING
    restarted = Harness(ledger, clock)
    clock.advance(T0 + timedelta(minutes=1))
    changed = restarted.pipeline.start()
    assert [(s.key, s.state) for s in changed] == [(key, after_recover)]
    restarted.run(T0 + timedelta(minutes=2))
    assert restarted.state(key) is final
    assert len(restarted.provider.sent) == sent


def test_rule_deleted_by_reload_drops_pending_send(h: Harness) -> None:
    h.pipeline.start()
    h.pipeline.ingest([item(line("cart_abandoned", "e1"))])
    h.rules.current = parse_rules(
        "rules: [{id: welcome, on: user_signup, send: {template: d-welcome}}]"
    ).rule_set()
    h.run(T0 + timedelta(hours=1))
    send = h.ledger.get_send("cart:e1")
    assert send is not None
    assert (send.state, send.reason) == (SendState.CANCELLED, "rule_deleted")
    assert h.provider.calls == []
    assert h.outcomes()[-1] == ("dropped", "rule_deleted", "cart:e1")


def test_cancel_and_delay_through_the_pipeline(h: Harness) -> None:
    rules = RULES.replace("delay: 1h", "delay: 1h\n    cancel_on: [order_completed]")
    h.rules.current = parse_rules(rules).rule_set()
    h.pipeline.ingest(
        [item(line("cart_abandoned", "e1")), item(line("cart_abandoned", "e2", "u2"))]
    )
    h.pipeline.ingest([item(line("order_completed", "o1"), 3)])
    h.run(T0 + timedelta(hours=2))
    assert h.state("cart:e1") is SendState.CANCELLED
    assert sorted(e.key for e in h.provider.sent) == ["cart:e2", "receipt:o1"]


def test_sqlite_ledger_end_to_end(tmp_path: Path, clock: VirtualClock) -> None:
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path, clock=clock)
    h = Harness(ledger, clock)
    h.pipeline.start()
    h.pipeline.ingest([item(line("cart_abandoned", "e1")), item(line("user_signup", "e2"))], "s")
    h.run()
    assert [e.key for e in h.provider.sent] == ["welcome:u1"]
    h.provider.fail_next(RetryableDeliveryError("503"))
    h.run(T0 + timedelta(hours=1))
    assert h.state("cart:e1") is SendState.SCHEDULED
    ledger.close()
    # a restart on the same file: nothing resent, the retry still goes out
    reopened = SqliteLedger(path, clock=clock)
    again = Harness(reopened, clock)
    assert again.pipeline.start() == []
    again.pipeline.ingest([item(line("user_signup", "e2"), 3)], "s")
    again.run(T0 + timedelta(hours=2))
    assert [e.key for e in again.provider.sent] == ["cart:e1"]
    status = reopened.status()
    assert status.counts[SendState.SENT] == 2
    with reopened.transaction() as txn:
        assert txn.get_position("s") == "3"
    reopened.close()


def test_a_sqlite_batch_finds_the_keys_of_earlier_batches_and_its_own(
    tmp_path: Path, clock: VirtualClock
) -> None:
    # The batch's keys are read in one statement before its events are decided: a key an
    # earlier event of the same batch took must still be found, in and out of the kept sends.
    ledger = SqliteLedger(tmp_path / "ledger.db", clock=clock)
    h = Harness(ledger, clock)
    h.pipeline.ingest([item(line("user_signup", "e1"))], "s")
    lines = [
        line("user_signup", "e2"),
        line("user_signup", "e3", "u2"),
        line("cart_abandoned", "e4", "u2"),
        line("user_signup", "e5", "u2"),
    ]
    result = h.pipeline.ingest([item(data, n) for n, data in enumerate(lines, start=2)], "s")
    assert [send.key for send in result.scheduled] == ["welcome:u2", "cart:e4"]
    assert h.outcomes()[1:] == [
        ("skipped", "duplicate_key", "welcome:u1"),
        ("scheduled", "immediate", "welcome:u2"),
        ("scheduled", "delay", "cart:e4"),
        ("skipped", "duplicate_key", "welcome:u2"),
    ]
    assert ledger.status().counts[SendState.SCHEDULED] == 3
    ledger.close()


def test_a_stale_cache_entry_of_another_worker_is_not_decided(clock: VirtualClock) -> None:
    # Two workers on one ledger: the second cached the send before the first tried it (503),
    # so its entry is stale. It must not decide from it (the multi-worker run lost a nudge:
    # the stale decision dropped it for cooldown); the first worker's retry sends it, once.
    ledger = MemoryLedger(clock=clock, shared=True)
    first, second = Harness(ledger, clock), Harness(ledger, clock)
    first.pipeline.ingest([item(line("user_signup", "e1"))])
    second.pipeline.start()  # its cache now holds welcome:u1, due now
    first.provider.fail_next(RetryableDeliveryError("503 service unavailable"))
    first.run()
    retry = ledger.get_send("welcome:u1")
    assert retry is not None and retry.state is SendState.SCHEDULED

    second.run()
    assert second.provider.calls == []
    assert second.outcomes() == []
    assert first.state("welcome:u1") is SendState.SCHEDULED

    first.run(retry.due_at)
    assert first.state("welcome:u1") is SendState.SENT
    assert len(first.provider.sent) + len(second.provider.sent) == 1
    ledger.close()


NUDGE = """
rules:
  - id: nudge
    on: browse
    delay: 1m
    cooldown: 1d
    send: {template: d-nudge}
"""


def test_a_users_earlier_nudge_fires_first_whichever_worker_holds_it(
    clock: VirtualClock,
) -> None:
    # Each worker caches the sends it scheduled. The second worker read the user's second
    # browse, so its cache holds only the later nudge; firing it first let the cooldown drop
    # the earlier one, out of the order the browses came in. It decides the earlier one first.
    ledger = MemoryLedger(clock=clock, shared=True)
    first, second = Harness(ledger, clock), Harness(ledger, clock)
    for worker in (first, second):
        worker.rules.current = parse_rules(NUDGE).rule_set()
        worker.pipeline.start()  # loads the next five minutes: the nudges fall due inside
    first.pipeline.ingest([item(line("browse", "b1"), 1)])
    clock.advance(T0 + timedelta(seconds=30))
    second.pipeline.ingest([item(line("browse", "b2", ts="2026-11-27T20:00:30Z"), 2)])

    second.run(T0 + timedelta(minutes=2))
    first.run()
    assert [e.key for e in second.provider.sent] == ["nudge:b1"]
    assert first.provider.calls == []
    assert ledger.get_send("nudge:b2") is not None
    assert second.state("nudge:b2") is SendState.CANCELLED
    assert ("dropped", "cooldown", "nudge:b2") in second.outcomes()
    ledger.close()


def test_the_scheduler_given_is_kept_even_while_empty(clock: VirtualClock) -> None:
    # An empty scheduler is falsy (it has a length): `scheduler or Scheduler()` dropped the
    # one simulate passes, with its long horizon, for a default one.
    scheduler = Scheduler(horizon_s=86_400.0)
    pipeline = Pipeline(
        MemoryLedger(clock=clock), RuleSet, RecordingProvider(), clock, scheduler=scheduler
    )
    assert pipeline.scheduler is scheduler


def test_more_sends_due_than_the_scheduler_holds_fire_once_in_due_order(
    clock: VirtualClock, tmp_path: Path
) -> None:
    # Ten nudges due, a heap of four, two fired a turn: the heap fires before the ledger is
    # read again (cut short twice), and the order stays the due order, so the cooldown keeps
    # the user's first.
    ledger = SqliteLedger(tmp_path / "ledger.db", clock=clock)
    h = Harness(ledger, clock)
    h.rules.current = parse_rules(NUDGE).rule_set()
    h.pipeline.scheduler = Scheduler(horizon_s=300, max_entries=4)
    h.pipeline.start()
    browses = [(f"u{n}", n) for n in range(9)] + [("u1", 9)]
    h.pipeline.ingest(
        [
            item(line("browse", f"b{n}", user, ts=f"2026-11-27T20:00:0{second}Z"), n)
            for n, (user, second) in enumerate(browses)
        ]
    )
    clock.advance(T0 + timedelta(minutes=5))
    while fired := h.pipeline.fire_due(limit=2):
        h.pipeline.deliver(fired)
    sent = [e.key for e in h.provider.sent]
    assert sent == [f"nudge:b{n}" for n in range(9)]
    assert h.state("nudge:b9") is SendState.CANCELLED
    assert ("dropped", "cooldown", "nudge:b9") in h.outcomes()
    ledger.close()
