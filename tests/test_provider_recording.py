"""RecordingProvider: records what it accepts, fails on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from trigmail.decisions import Payload
from trigmail.errors import InDoubtDeliveryError, RetryableDeliveryError
from trigmail.providers.base import Accepted, Email, Provider
from trigmail.providers.outbox import OutboxProvider
from trigmail.providers.recording import RecordingProvider
from trigmail.providers.sendgrid import SendGridProvider
from trigmail.rules.model import Address
from trigmail.secrets import Secret


def email(key: str) -> Email:
    return Email(key=key, rule_id="r", to="ana@example.com", payload=Payload("d-x", {}))


def test_records_every_accepted_email_in_order() -> None:
    provider = RecordingProvider()
    first = provider.send([email("a"), email("b")])
    second = provider.send([email("c")])
    assert [e.key for e in provider.sent] == ["a", "b", "c"]
    assert (first, second) == (Accepted("recording-1"), Accepted("recording-2"))


def test_fails_the_next_calls_then_accepts() -> None:
    provider = RecordingProvider()
    provider.fail_next(RetryableDeliveryError("429", retry_after_s=2), times=2)
    provider.fail_next(InDoubtDeliveryError("timeout"))
    raised = []
    for _ in range(3):
        with pytest.raises((RetryableDeliveryError, InDoubtDeliveryError)) as caught:
            provider.send([email("a")])
        raised.append(type(caught.value))
    assert raised == [RetryableDeliveryError, RetryableDeliveryError, InDoubtDeliveryError]
    assert provider.sent == []
    assert provider.send([email("a")]) == Accepted("recording-1")
    assert [e.key for e in provider.sent] == ["a"]
    assert len(provider.calls) == 4


def test_close_is_recorded() -> None:
    provider = RecordingProvider()
    provider.close()
    assert provider.closed


def test_every_provider_meets_the_protocol(tmp_path: Path) -> None:
    # The annotations are the test for mypy; the names are the test at run time.
    sendgrid: Provider = SendGridProvider(
        Secret("SG.k"), host="http://127.0.0.1:9", default_from=Address("a@example.com")
    )
    outbox: Provider = OutboxProvider(tmp_path, Address("a@example.com"))
    recording: Provider = RecordingProvider()
    try:
        assert [p.name for p in (sendgrid, outbox, recording)] == [
            "sendgrid",
            "outbox",
            "recording",
        ]
    finally:
        sendgrid.close()
