"""A pipeline on a ledger with a recording provider and a virtual clock, for the in-process
tests of the shell (tests/test_pipeline*.py): events in, sends out, outcomes noted."""

from __future__ import annotations

import json
import random
import textwrap
from datetime import UTC, datetime
from typing import Any

from trigmail.decisions import LogEntry
from trigmail.delivery import RetryPolicy
from trigmail.ingest import RawItem
from trigmail.ledger.base import Ledger, SendState
from trigmail.pipeline import Pipeline
from trigmail.providers.recording import RecordingProvider
from trigmail.rules.loader import parse_rules
from trigmail.rules.model import RuleSet
from trigmail.simulate import VirtualClock

T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
SEED = 1234

RULES = textwrap.dedent(
    """
    rules:
      - id: welcome
        on: user_signup
        dedupe: "{rule}:{user_id}"
        send: {template: d-welcome, data: {name: "{{ user.first_name }}"}}
      - id: receipt
        on: order_completed
        on_doubt: resend
        send: {template: d-receipt}
      - id: cart
        on: cart_abandoned
        delay: 1h
        send: {template: d-cart}
    """
)


def line(name: str, event_id: str, user_id: str = "u1", **extra: Any) -> bytes:
    obj = {
        "id": event_id,
        "event": name,
        "user_id": user_id,
        "email": f"{user_id}@example.com",
        "ts": "2026-11-27T20:00:00Z",
        "user": {"first_name": "Ana"},
        **extra,
    }
    return json.dumps(obj).encode()


def item(data: bytes, n: int = 1) -> RawItem:
    return RawItem(data, f"events:{n}", str(n))


class Rules:
    """The rule set in force; a test swaps it like a reload would."""

    def __init__(self, text: str) -> None:
        self.current = parse_rules(text).rule_set()

    def __call__(self) -> RuleSet:
        return self.current


class Harness:
    def __init__(self, ledger: Ledger, clock: VirtualClock, retry: RetryPolicy | None = None):
        self.clock = clock
        self.ledger = ledger
        self.provider = RecordingProvider()
        self.rules = Rules(RULES)
        self.entries: list[LogEntry] = []
        self.pipeline = Pipeline(
            ledger,
            self.rules,
            self.provider,
            clock,
            retry=retry,
            rng=random.Random(SEED),
            on_entries=self.entries.extend,
        )

    def run(self, at: datetime | None = None) -> None:
        """Advance to ``at`` and fire and deliver whatever is due."""
        if at is not None:
            self.clock.advance(at)
        self.pipeline.deliver(self.pipeline.fire_due())

    def state(self, key: str) -> SendState:
        send = self.ledger.get_send(key)
        assert send is not None
        return send.state

    def outcomes(self) -> list[tuple[str, str, str | None]]:
        return [(e.outcome.value, e.reason.value, e.key) for e in self.entries]
