"""Fuzzing the Event Webhook endpoint over real HTTP: no input crashes it or gets a 5xx.

Requests are arbitrary bytes on the socket, arbitrary headers and bodies, and signed bodies of
arbitrary JSON (a valid signature over junk must still be a 4xx or a 2xx). After each example
the listener must still answer a good request.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trigmail.ledger import SqliteLedger
from trigmail.webhook.listener import WebhookServer, serve_webhook
from trigmail.webhook.observe import WebhookMetrics
from trigmail.webhook.receiver import Receiver
from trigmail.webhook.signature import Verifier, parse_public_key

from .webhook_client import event_item, make_key, post, post_events, signed_headers

PATH = "/sendgrid/events"
PRIVATE, PUBLIC = make_key()
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from(["processed", "delivered", "open", "bounce", "x"]) | json_values,
        "sg_event_id": st.text(max_size=600) | json_values,
        "trigmail_key": st.text(max_size=600) | json_values,
        "trigmail_rule": st.text(max_size=80) | json_values,
        "timestamp": st.integers() | st.floats() | json_values,
        "sg_message_id": st.text(max_size=40) | json_values,
        "reason": json_values,
    },
)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    verifier = Verifier(parse_public_key(PUBLIC, "test"))
    from prometheus_client import CollectorRegistry

    receiver = Receiver(
        ledger, verifier, WebhookMetrics(CollectorRegistry()), path=PATH, max_age_s=600
    )
    server: WebhookServer = serve_webhook(receiver, "127.0.0.1:0", 100_000)
    try:
        yield f"http://127.0.0.1:{server.port}{PATH}"
    finally:
        server.close()
        ledger.close()


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/", maxsplit=1)[0])


def _raw_status(url: str, data: bytes) -> int | None:
    """Send ``data`` as the whole request; return the answer's status, if any came."""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionError:
            return None
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


def _still_serving(url: str) -> None:
    assert post_events(url, PRIVATE, [event_item("welcome:ok")]) == 200


@FUZZ
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_never_get_a_5xx(url: str, data: bytes) -> None:
    status = _raw_status(url, data)
    assert status is None or 400 <= status < 500
    _still_serving(url)


@FUZZ
@given(
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "X-Twilio-Email-Event-Webhook-Signature",
                "X-Twilio-Email-Event-Webhook-Timestamp",
                "Content-Type",
                "X-Other",
            ]
        ),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120),
    ),
    body=st.binary(max_size=3000),
)
def test_arbitrary_headers_and_bodies_never_get_a_5xx(
    url: str, method: str, headers: dict[str, str], body: bytes
) -> None:
    head = f"{method} {PATH} HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    status = _raw_status(url, head.encode() + b"\r\n" + body)
    assert status is not None and 400 <= status < 500
    _still_serving(url)


@FUZZ
@given(document=st.lists(event_like, max_size=8) | json_values)
def test_signed_junk_is_a_2xx_or_a_4xx(url: str, document: object) -> None:
    body = json.dumps(document).encode()
    status = post(url, body, signed_headers(PRIVATE, body))
    assert status == 200 if isinstance(document, list) else status == 400
    _still_serving(url)
