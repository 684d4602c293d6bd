"""Personalization batches against the SendGrid fake: one request per batch, and a 400 for a
batch is split so that one bad address does not fail the others."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.fake_sendgrid import FakeSendGrid
from trigmail.decisions import Payload
from trigmail.delivery import requests
from trigmail.ledger.base import SendRecord, SendState
from trigmail.ledger.memory import MemoryLedger
from trigmail.pipeline import Pipeline
from trigmail.providers.sendgrid import SendGridProvider
from trigmail.rules.model import Address, OnDoubt, RuleSet
from trigmail.secrets import Secret


def _send(key: str, email: str, due_at: datetime) -> SendRecord:
    return SendRecord(
        key=key,
        rule_id="welcome",
        step=0,
        user_id=key,
        email=email,
        event_id=f"e-{key}",
        due_at=due_at,
        payload=Payload(template="d-welcome", data={"n": key}, categories=("welcome",)),
        on_doubt=OnDoubt.SKIP,
        rules_version="v1",
    )


def _claimed(ledger: MemoryLedger, sends: list[SendRecord], at: datetime) -> list[SendRecord]:
    with ledger.transaction() as txn:
        for send in sends:
            txn.insert_send(send)
        return txn.claim([send.key for send in sends], at)


def _pipeline(ledger: MemoryLedger, fake: FakeSendGrid, at: datetime) -> Pipeline:
    provider = SendGridProvider(
        Secret(fake.api_key), default_from=Address("shop@example.com"), host=fake.url
    )
    return Pipeline(ledger, RuleSet, provider, lambda: at)  # no rules: deliver only


def test_sends_due_together_go_in_one_request(sendgrid_fake: FakeSendGrid, t0: datetime) -> None:
    ledger = MemoryLedger(clock=lambda: t0)
    sends = [_send(f"k{n}", f"user{n}@example.com", t0) for n in range(5)]
    pipeline = _pipeline(ledger, sendgrid_fake, t0)
    try:
        claimed = _claimed(ledger, sends, t0)
        assert len(requests(claimed)) == 1
        pipeline.deliver(claimed)
    finally:
        pipeline.provider.close()
    assert len(sendgrid_fake.accepted) == 1
    assert sendgrid_fake.accepted_keys() == [f"k{n}" for n in range(5)]
    records = [ledger.get_send(f"k{n}") for n in range(5)]
    assert [None if r is None else r.state for r in records] == [SendState.SENT] * 5


def test_a_bad_address_fails_alone(sendgrid_fake: FakeSendGrid, t0: datetime) -> None:
    ledger = MemoryLedger(clock=lambda: t0)
    addresses = ["a@example.com", "b@example.com", "bad@", "d@example.com", "e@example.com"]
    sends = [_send(f"k{n}", address, t0) for n, address in enumerate(addresses)]
    pipeline = _pipeline(ledger, sendgrid_fake, t0 + timedelta(seconds=1))
    try:
        pipeline.deliver(_claimed(ledger, sends, t0))
    finally:
        pipeline.provider.close()
    states = {send.key: ledger.get_send(send.key) for send in sends}
    assert sorted(sendgrid_fake.accepted_keys()) == ["k0", "k1", "k3", "k4"]
    assert states["k2"] is not None and states["k2"].state is SendState.FAILED
    assert "valid address" in (states["k2"].last_error or "")
    others = [record for key, record in states.items() if key != "k2"]
    assert all(record is not None and record.state is SendState.SENT for record in others)
