"""SendGrid's Event Webhook receiver over real HTTP: verification, bounds, durability."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import CollectorRegistry

from trigmail.config import Config
from trigmail.configload import load_config
from trigmail.decisions import Payload
from trigmail.errors import ConfigError
from trigmail.evidence import DeliveryEvent, DeliveryEventType
from trigmail.ledger import MemoryLedger, SqliteLedger
from trigmail.ledger.base import Ledger, SendRecord, SendState
from trigmail.providers.base import Email
from trigmail.providers.bodies import custom_args
from trigmail.rules.model import Address, OnDoubt
from trigmail.webhook.events import KEY_ARG, RULE_ARG
from trigmail.webhook.listener import WebhookServer, serve_webhook
from trigmail.webhook.observe import WebhookMetrics
from trigmail.webhook.receiver import Receiver
from trigmail.webhook.signature import Verifier, parse_public_key, resolve_public_key

from .webhook_client import event_item, make_key, post, post_events, signed_headers

PATH = "/sendgrid/events"
MAX_BODY = 64 * 1024


@dataclass
class Endpoint:
    url: str
    private: ec.EllipticCurvePrivateKey
    ledger: Ledger
    registry: CollectorRegistry

    def count(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


PRIVATE, PUBLIC = make_key()


def start(ledger: Ledger) -> tuple[WebhookServer, Endpoint]:
    private, public = PRIVATE, PUBLIC
    registry = CollectorRegistry()
    verifier = Verifier(parse_public_key(public, "test"))
    receiver = Receiver(ledger, verifier, WebhookMetrics(registry), path=PATH, max_age_s=600)
    server = serve_webhook(receiver, "127.0.0.1:0", MAX_BODY)
    url = f"http://127.0.0.1:{server.port}{PATH}"
    return server, Endpoint(url, private, ledger, registry)


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    server, found = start(ledger)
    try:
        yield found
    finally:
        server.close()
        ledger.close()


def in_doubt(ledger: Ledger, key: str, on_doubt: OnDoubt = OnDoubt.SKIP) -> None:
    at = datetime.now(UTC)
    payload = Payload(template="d-1", data={}, from_=Address("hello@example.com", "Shop"))
    send = SendRecord(key, "welcome", 0, "u1", "u1@example.com", "e1", at, payload, on_doubt, "v1")
    with ledger.transaction() as txn:
        txn.insert_send(send)
    with ledger.transaction() as txn:
        txn.claim([key], at)
        txn.finish([key], SendState.IN_DOUBT, at, error="read timeout")


def test_the_custom_args_the_provider_writes_are_the_ones_read() -> None:
    payload = Payload(template="d-1", data={})
    args = custom_args(Email("welcome:e1", "welcome", "a@example.com", payload))
    assert args[KEY_ARG] == "welcome:e1"
    assert args[RULE_ARG] == "welcome"


def test_a_signed_batch_is_stored_once_and_settles_its_send(endpoint: Endpoint) -> None:
    in_doubt(endpoint.ledger, "welcome:e1")
    batch = [
        event_item("welcome:e1", "processed", message_id="m1", sg_event_id="s1"),
        event_item("welcome:e1", "delivered", message_id="m1", sg_event_id="s2"),
        event_item("welcome:e2", "open", sg_event_id="s3"),
        {"email": "x@example.com", "event": "processed", "sg_event_id": "other-app"},
    ]
    assert post_events(endpoint.url, endpoint.private, batch) == 200
    assert post_events(endpoint.url, endpoint.private, batch) == 200  # SendGrid's retry
    send = endpoint.ledger.get_send("welcome:e1")
    assert send is not None
    assert send.state == SendState.SENT
    assert send.message_id == "m1.filterdrecv-1"
    assert send.reason == "evidence:processed"
    events = endpoint.ledger.delivery_events("welcome:e1")
    assert [e.sg_event_id for e in events] == ["s1", "s2"]
    assert endpoint.count("trigmail_webhook_requests_total", outcome="accepted") == 2
    labels = {"rule": "welcome", "event": "delivered"}
    assert endpoint.count("trigmail_webhook_events_total", **labels) == 1
    assert endpoint.count("trigmail_webhook_duplicate_events_total") == 3
    assert endpoint.count("trigmail_webhook_skipped_events_total", why="foreign") == 2
    assert endpoint.count("trigmail_sends_settled_by_evidence_total", rule="welcome") == 1


def test_a_bounce_is_evidence_too_and_keeps_its_detail(endpoint: Endpoint) -> None:
    # A bounce for a send in doubt is still evidence that SendGrid had the request.
    in_doubt(endpoint.ledger, "welcome:e1")
    batch = [event_item("welcome:e1", "bounce", type="bounce", reason="550 no such user")]
    assert post_events(endpoint.url, endpoint.private, batch) == 200
    events = endpoint.ledger.delivery_events("welcome:e1")
    assert events[0].detail == "type=bounce; reason=550 no such user"
    assert endpoint.ledger.get_send("welcome:e1").state == SendState.SENT  # type: ignore[union-attr]


def _stale(private: ec.EllipticCurvePrivateKey, body: bytes) -> dict[str, str]:
    return signed_headers(private, body, str(int(datetime.now(UTC).timestamp()) - 3600))


BODY = json.dumps([event_item("welcome:e1")]).encode()


def _bad_request(case: str, url: str) -> tuple[str, bytes, dict[str, str]]:
    """The request of one bad case, at call time (a signed timestamp ages)."""
    signature, timestamp = (
        "X-Twilio-Email-Event-Webhook-Signature",
        "X-Twilio-Email-Event-Webhook-Timestamp",
    )
    large = b"[" + b" " * MAX_BODY + b"]"
    cases: dict[str, tuple[str, bytes, dict[str, str]]] = {
        "unsigned": (url, BODY, {}),
        "other_key": (url, BODY, signed_headers(make_key()[0], BODY)),
        "tampered": (url, BODY.replace(b"processed", b"x"), signed_headers(PRIVATE, BODY)),
        "junk_signature": (url, BODY, {**signed_headers(PRIVATE, BODY), signature: "no!"}),
        "stale": (url, BODY, _stale(PRIVATE, BODY)),
        "not_a_number": (url, BODY, {**signed_headers(PRIVATE, BODY), timestamp: "yesterday"}),
        "malformed": (url, b"{}", signed_headers(PRIVATE, b"{}")),
        "not_utf8": (url, b"\xff[", signed_headers(PRIVATE, b"\xff[")),
        "too_large": (url, large, signed_headers(PRIVATE, large)),
        "wrong_path": (url.replace(PATH, "/other"), BODY, signed_headers(PRIVATE, BODY)),
    }
    return cases[case]


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("unsigned", 401, "unsigned"),  # no signature headers
        ("other_key", 403, "bad_signature"),  # signed by someone else
        ("tampered", 403, "bad_signature"),  # body changed after signing
        ("junk_signature", 403, "bad_signature"),  # not base64 DER
        ("stale", 403, "stale"),  # signed an hour ago: a replay
        ("not_a_number", 403, "stale"),  # timestamp not Unix seconds
        ("malformed", 400, "malformed"),  # signed, but not a JSON array
        ("not_utf8", 400, "malformed"),  # not text at all
        ("too_large", 413, "too_large"),  # over max_body_bytes
        ("wrong_path", 404, "not_found"),
    ],
)
def test_a_bad_request_gets_a_4xx_and_a_count_and_stores_nothing(
    endpoint: Endpoint, case: str, status: int, reason: str
) -> None:
    url, body, headers = _bad_request(case, endpoint.url)
    try:
        assert post(url, body, headers) == status
    except ConnectionError:
        assert case == "too_large"  # refused unread: the client may see the reset first
    assert endpoint.count("trigmail_webhook_requests_total", outcome=reason) == 1
    assert endpoint.ledger.delivery_events("welcome:e1") == []


def test_an_error_answer_carries_no_body(endpoint: Endpoint) -> None:
    with socket.create_connection(
        ("127.0.0.1", int(endpoint.url.split(":")[2].split("/")[0]))
    ) as s:
        s.sendall(b"POST " + PATH.encode() + b" HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    assert body == b""


def test_a_ledger_failure_answers_5xx_so_sendgrid_retries() -> None:
    ledger = MemoryLedger()
    server, found = start(ledger)
    try:
        ledger.close()  # every transaction now fails
        assert post_events(found.url, found.private, [event_item("welcome:e1")]) == 503
        assert found.count("trigmail_webhook_requests_total", outcome="ledger_error") == 1
    finally:
        server.close()


# -- config -----------------------------------------------------------------------------------


def _config(tmp_path: Path, webhook: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "trigmail.yaml"
    path.write_text(f"webhook:\n{webhook}", encoding="utf-8")
    return load_config(path, environ=environ or {})


def test_the_webhook_is_off_by_default_and_verify_after_is_an_hour() -> None:
    config = load_config(None, environ={})
    assert config.webhook is None
    assert config.delivery.verify_after_s == 3600


def test_the_webhook_config_takes_a_key_in_each_form(tmp_path: Path) -> None:
    _, public = make_key()
    config = _config(tmp_path, f"  listen: 127.0.0.1:0\n  public_key: {public}\n  max_age: 5m\n")
    assert config.webhook is not None
    assert config.webhook.path == "/sendgrid/events"
    assert config.webhook.max_age_s == 300
    (tmp_path / "key.txt").write_text(public + "\n", encoding="utf-8")
    from_file = _config(tmp_path, f"  listen: 127.0.0.1:0\n  public_key_file: {tmp_path}/key.txt\n")
    assert _resolved(from_file) == public
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "sg-webhook").write_text(public, encoding="utf-8")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    spec = "  listen: 127.0.0.1:0\n  public_key_credential: sg-webhook\n"
    assert _resolved(_config(tmp_path, spec, environ), environ) == public


def _resolved(config: Config, environ: dict[str, str] | None = None) -> str:
    """The key the wiring finds for ``config``, as base64 DER."""
    assert config.webhook is not None
    key = resolve_public_key(config.webhook, environ or {})
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("  listen: 127.0.0.1:0\n", "a public key is required"),  # refuses to run unsigned
        ("  listen: 127.0.0.1:0\n  public_key: bm90IGEga2V5\n", "not a base64 DER public key"),
        ("  public_key: x\n", "webhook.listen is required"),
    ],
)
def test_a_webhook_without_a_usable_key_is_a_config_error(
    tmp_path: Path, spec: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, spec)


def test_a_key_of_another_curve_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = other.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match="P-256"):
        parse_public_key(base64.b64encode(der).decode(), "webhook.public_key")


def test_verify_waits_then_the_window_is_the_config(tmp_path: Path) -> None:
    path = tmp_path / "trigmail.yaml"
    path.write_text("delivery: {verify_after: 30m}\n", encoding="utf-8")
    assert load_config(path, environ={}).delivery.verify_after_s == 1800


# -- status and ledger in-doubt ---------------------------------------------------------------


def test_status_and_in_doubt_show_evidence_states_and_delivery_per_rule(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.serve_harness import clean_env

    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    try:
        in_doubt(ledger, "welcome:skip", OnDoubt.SKIP)
        in_doubt(ledger, "welcome:verify", OnDoubt.VERIFY)
        in_doubt(ledger, "welcome:resent", OnDoubt.VERIFY)
        now = datetime.now(UTC)
        with ledger.transaction() as txn:
            assert txn.resend_unverified(now, now)  # both verify sends, sent again
            txn.claim(["welcome:resent"], now)
            txn.finish(["welcome:resent"], SendState.IN_DOUBT, now)
        in_doubt(ledger, "welcome:waiting", OnDoubt.VERIFY)  # in doubt since now: waits
        with ledger.transaction() as txn:
            # the other one's evidence came; the rule's sends had a click too
            txn.add_delivery_events(
                [_stored("s1", "welcome:verify", "processed"), _stored("s2", "welcome:x", "click")]
            )
    finally:
        ledger.close()

    def run(*args: str) -> object:
        done = subprocess.run(
            [sys.executable, "-m", "trigmail", *args, "--ledger", str(path), "--format", "json"],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            check=True,
        )
        return json.loads(done.stdout)

    status = run("status")
    assert status["delivery"] == {"welcome": {"click": 1, "processed": 1}}  # type: ignore[index]
    by_key = {s["key"]: s["evidence"] for s in status["in_doubt"]}  # type: ignore[index]
    assert by_key == {
        "welcome:skip": "awaiting_evidence",
        "welcome:resent": "resent_no_evidence",
        "welcome:waiting": "awaiting_verify",
    }
    listed = run("ledger", "in-doubt")
    assert {s["key"]: s["evidence"] for s in listed} == by_key  # type: ignore[attr-defined]


def _stored(sg_event_id: str, key: str, kind: str) -> DeliveryEvent:
    at = datetime.now(UTC)
    return DeliveryEvent(sg_event_id, key, "welcome", DeliveryEventType(kind), at, None, "", at)


# -- the serve loop's sweep ---------------------------------------------------------------------


def test_the_sweep_settles_evidence_that_came_first_and_resends_unverified_once() -> None:
    from trigmail.webhook.reconcile import Reconciler

    ledger = MemoryLedger()
    registry = CollectorRegistry()
    ticks = [0.0]
    sweep = Reconciler(ledger, WebhookMetrics(registry), 60, monotonic=lambda: ticks[0])
    in_doubt(ledger, "welcome:hung", OnDoubt.SKIP)
    in_doubt(ledger, "welcome:lost", OnDoubt.VERIFY)
    with ledger.transaction() as txn:  # stored while the send was still in flight
        txn.add_delivery_events([_stored("s1", "welcome:hung", "processed")])
    now = datetime.now(UTC)
    assert sweep.step(now) is False  # evidence settles; the verify window is not over
    assert ledger.get_send("welcome:hung").state == SendState.SENT  # type: ignore[union-attr]
    assert ledger.get_send("welcome:lost").state == SendState.IN_DOUBT  # type: ignore[union-attr]
    waiting = {"evidence": "awaiting_verify"}
    assert registry.get_sample_value("trigmail_sends_in_doubt_by_evidence", waiting) == 1
    later = now + timedelta(seconds=61)
    assert sweep.step(later) is False  # within its period (15 s for a 60 s window): no sweep
    ticks[0] = sweep.interval_s
    assert sweep.step(later) is True  # sent again, once
    assert ledger.get_send("welcome:lost").state == SendState.SCHEDULED  # type: ignore[union-attr]
    labels = {"rule": "welcome"}
    assert registry.get_sample_value("trigmail_sends_settled_by_evidence_total", labels) == 1
    assert registry.get_sample_value("trigmail_sends_resent_unverified_total", labels) == 1
    gauge = "trigmail_sends_in_doubt_by_evidence"
    assert registry.get_sample_value(gauge, {"evidence": "awaiting_verify"}) == 0
