"""RecordingProvider: records what it accepts, fails on demand."""

from __future__ import annotations

import pytest

from trigmail.decisions import Payload
from trigmail.errors import InDoubtDeliveryError, RetryableDeliveryError
from trigmail.providers.base import Accepted, Email
from trigmail.providers.recording import RecordingProvider


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
