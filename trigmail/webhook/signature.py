"""The signature of an Event Webhook request: ECDSA P-256 / SHA-256 over the timestamp header
followed by the raw body, checked with the ``sendgrid`` package's ``EventWebhook`` helper.

The public key is not a secret (SendGrid's console shows it to anyone with access), but a
wrong one silently rejects every request, so it is parsed and checked when the config loads.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

from trigmail.config import WebhookConfig
from trigmail.errors import ConfigError

if TYPE_CHECKING:
    # Imported where a key is parsed or checked: serve imports this module for the webhook's
    # names whether or not it has a webhook, and ``sendgrid`` with ``cryptography`` is a
    # tenth of its import time.
    from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_HEADER: Final = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER: Final = "x-twilio-email-event-webhook-timestamp"
# A DER ECDSA P-256 signature is at most 72 bytes (96 in base64); anything much longer is junk
# that need not be decoded.
MAX_SIGNATURE_CHARS: Final = 256
NO_PUBLIC_KEY: Final = (
    "webhook: a public key is required (public_key, public_key_file or "
    "public_key_credential): an unsigned webhook would let anyone settle sends"
)


class Rejection(StrEnum):
    """Why a webhook request was refused: the ``reason`` label of its counter."""

    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    NOT_FOUND = "not_found"
    METHOD = "method"


def parse_public_key(text: str, where: str) -> ec.EllipticCurvePublicKey:
    """Return the P-256 key of ``text``, base64 DER as SendGrid's console shows it (PEM too).

    Raises:
        ConfigError: naming ``where`` when the text is not such a key.
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from sendgrid.helpers.eventwebhook import EventWebhook

    body = "".join(
        line for line in text.strip().splitlines() if not line.startswith("-----")
    ).strip()
    try:
        key = EventWebhook().convert_public_key_to_ecdsa(body)
    except (ValueError, TypeError, binascii.Error):
        raise ConfigError(f"{where}: not a base64 DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{where}: SendGrid signs with an ECDSA P-256 key; this is another")
    return key


def resolve_public_key(
    config: WebhookConfig, environ: Mapping[str, str] | None = None
) -> ec.EllipticCurvePublicKey:
    """Return the key of the ``webhook:`` section: ``public_key_credential`` (a systemd
    credential), ``public_key_file`` or ``public_key``, the first that is set.

    Raises:
        ConfigError: none is set, or the one set cannot be read or is not a P-256 key.
    """
    environ = os.environ if environ is None else environ
    credential = config.public_key_credential
    credentials_dir = environ.get("CREDENTIALS_DIRECTORY")
    if credential and credentials_dir:
        path = Path(credentials_dir) / credential
        if path.is_file():
            return _from_file(path, "webhook.public_key_credential")
    if config.public_key_file is not None:
        return _from_file(config.public_key_file, "webhook.public_key_file")
    if config.public_key:
        return parse_public_key(config.public_key, "webhook.public_key")
    raise ConfigError(NO_PUBLIC_KEY)


def _from_file(path: Path, where: str) -> ec.EllipticCurvePublicKey:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: {type(exc).__name__}") from None
    return parse_public_key(text, f"{where} ({path})")


class Verifier:
    """Checks signatures with one public key.

    Args:
        key: SendGrid's verification key.
    """

    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        from sendgrid.helpers.eventwebhook import EventWebhook

        self._key = key
        self._helper = EventWebhook()

    def verify(self, body: str, signature: str, timestamp: str) -> bool:
        """Return whether ``signature`` signs ``timestamp + body``."""
        if len(signature) > MAX_SIGNATURE_CHARS:
            return False
        try:
            return bool(self._helper.verify_signature(body, signature, timestamp, self._key))
        except (ValueError, binascii.Error):
            return False  # not base64, or not a DER signature


def sign(private_key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: str) -> str:
    """Return SendGrid's signature of ``body`` at ``timestamp`` (tests, the fake, the bench)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    signed = private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signed).decode()
