"""Signing and posting SendGrid Event Webhook requests, for tests, the fake and the bench."""

from __future__ import annotations

import base64
import http.client
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trigmail.webhook.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign


def make_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """Return a new P-256 key and its public half as SendGrid's console shows it."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(der).decode()


def event_item(
    key: str,
    kind: str = "processed",
    *,
    rule: str = "welcome",
    message_id: str = "msg-1",
    at_s: float | None = None,
    sg_event_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One event object as SendGrid posts it, with trigmail's custom args at the top level."""
    return {
        "email": "ana@example.com",
        "timestamp": int(time.time() if at_s is None else at_s),
        "event": kind,
        "sg_event_id": sg_event_id or uuid.uuid4().hex,
        "sg_message_id": f"{message_id}.filterdrecv-1",
        "trigmail_key": key,
        "trigmail_rule": rule,
        **extra,
    }


def signed_headers(
    private: ec.EllipticCurvePrivateKey, body: bytes, timestamp: str | None = None
) -> dict[str, str]:
    """The two signature headers of ``body``."""
    stamp = str(int(time.time())) if timestamp is None else timestamp
    return {
        "X-Twilio-Email-Event-Webhook-Signature": sign(private, body, stamp),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def post(
    url: str, body: bytes, headers: Mapping[str, str] | None = None, *, timeout_s: float = 10.0
) -> int:
    """POST ``body`` to ``url`` and return the status."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        conn.request(
            "POST",
            parts.path,
            body=body,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def post_events(
    url: str, private: ec.EllipticCurvePrivateKey, events: Sequence[Mapping[str, Any]]
) -> int:
    """POST ``events`` as one signed batch; return the status."""
    body = json.dumps(list(events)).encode()
    return post(url, body, signed_headers(private, body))


__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "event_item", "make_key", "post", "post_events"]
