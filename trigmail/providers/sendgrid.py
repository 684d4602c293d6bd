"""SendGrid v3 ``/v3/mail/send`` over a pooled, keep-alive ``httpx.Client``.

The request body is built here as a plain dict rather than with ``sendgrid.helpers.mail``: a
templated send is a handful of fields, the dict shows the exact JSON that goes out (the outbox
writes the same one), and the helpers' object model would add a translation layer to test.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from trigmail.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from trigmail.providers.base import Accepted, BatchKey, Email, batch_key
from trigmail.providers.classify import classify
from trigmail.rules.model import Address
from trigmail.secrets import REDACTED, Secret, redact_url

logger = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.sendgrid.com"
SEND_PATH = "/v3/mail/send"

# SendGrid's documented per-request limits (DESIGN.md §3).
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_CATEGORIES = 10
MAX_CUSTOM_ARGS_BYTES = 10_000  # the custom args must stay strictly under this
# Each personalization has exactly one recipient, so one number bounds both limits.
_MAX_EMAILS_PER_REQUEST = min(MAX_PERSONALIZATIONS, MAX_RECIPIENTS)


# Built once: json.dumps with options builds a new encoder per call (once per email here).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def custom_args(email: Email) -> dict[str, str]:
    """Return the ``custom_args`` that match SendGrid's records and webhooks to the ledger."""
    return {"trigmail_key": email.key, "trigmail_rule": email.rule_id}


def custom_args_bytes(email: Email) -> int:
    """Return the size of ``email``'s custom args as compact UTF-8 JSON."""
    return len(_COMPACT.encode(custom_args(email)).encode())


def _may_break_args_limit(email: Email) -> bool:
    # A character encodes to at most 12 bytes (a surrogate pair as two \uXXXX escapes), and the
    # JSON around the two values is under 50: below this, encoding them is not worth its cost.
    return 12 * (len(email.key) + len(email.rule_id)) + 50 >= MAX_CUSTOM_ARGS_BYTES


def build_body(emails: Sequence[Email], default_from: Address) -> dict[str, Any]:
    """Return the ``/v3/mail/send`` JSON body for a batch sharing one :func:`batch_key`."""
    first = emails[0].payload
    body: dict[str, Any] = {
        "personalizations": [_personalization(email) for email in emails],
        "from": _address(first.from_ or default_from),
        "template_id": first.template,
    }
    if first.reply_to is not None:
        body["reply_to"] = _address(first.reply_to)
    if first.categories:
        body["categories"] = list(first.categories)
    if first.asm_group is not None:
        body["asm"] = {"group_id": first.asm_group}
    return body


def _personalization(email: Email) -> dict[str, Any]:
    return {
        "to": [{"email": email.to}],
        "dynamic_template_data": _plain(email.payload.data),
        "custom_args": custom_args(email),
    }


def _address(address: Address) -> dict[str, str]:
    obj = {"email": address.email}
    if address.name:
        obj["name"] = address.name
    return obj


def _plain(value: Any) -> Any:
    # Payload data may hold read-only mappings and tuples (frozen at scheduling): the body is
    # plain dicts and lists so any JSON encoder takes it.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass
class _Request:
    """Emails bound for one request, and the addresses already in it."""

    emails: list[Email] = field(default_factory=list)
    addresses: set[str] = field(default_factory=set)

    def fits(self, email: Email) -> bool:
        return len(self.emails) < _MAX_EMAILS_PER_REQUEST and email.to.lower() not in self.addresses

    def add(self, email: Email) -> None:
        self.emails.append(email)
        self.addresses.add(email.to.lower())


def split_batch(emails: Sequence[Email]) -> list[list[Email]]:
    """Split emails into requests that each keep SendGrid's limits, in order of appearance.

    Emails with different :func:`batch_key` go to different requests; an address appears at most
    once per request (compared case-insensitively); a request holds at most 1,000 emails. An email
    whose custom args alone break the size limit goes alone, so that only its own send fails.
    """
    requests: list[_Request] = []
    open_by_key: dict[BatchKey, list[_Request]] = {}
    for email in emails:
        if _may_break_args_limit(email) and custom_args_bytes(email) >= MAX_CUSTOM_ARGS_BYTES:
            requests.append(_Request(emails=[email]))
            continue
        candidates = open_by_key.setdefault(batch_key(email), [])
        request = next((r for r in candidates if r.fits(email)), None)
        if request is None:
            request = _Request()
            candidates.append(request)
            requests.append(request)
        request.add(email)
    return [request.emails for request in requests]


def _check_batch(emails: Sequence[Email]) -> None:
    """Refuse a batch :func:`split_batch` would split; reject what no split can fix."""
    if not emails:
        raise ValueError("an empty batch: nothing to send")
    if len(split_batch(emails)) != 1:
        raise ValueError(
            f"a batch of {len(emails)} emails breaks SendGrid's request limits or mixes "
            "message attributes: split it with split_batch() first"
        )
    categories = emails[0].payload.categories
    if len(categories) > MAX_CATEGORIES:
        raise PermanentDeliveryError(
            f"{len(categories)} categories; SendGrid allows at most {MAX_CATEGORIES}"
        )
    size_bytes = custom_args_bytes(emails[0])
    if size_bytes >= MAX_CUSTOM_ARGS_BYTES:
        raise PermanentDeliveryError(
            f"custom args of {size_bytes} bytes; SendGrid needs under {MAX_CUSTOM_ARGS_BYTES}"
        )


class _SendTrace:
    """An httpcore ``trace`` hook that notes whether request bytes may have left the host."""

    def __init__(self) -> None:
        self.bytes_sent = False

    def __call__(self, event_name: str, info: Mapping[str, Any]) -> None:
        # Once writing the headers has begun, any failure may follow a request SendGrid read.
        if event_name.endswith(".send_request_headers.started"):
            self.bytes_sent = True


class SendGridProvider:
    """Sends batches to SendGrid; every failure becomes one of the three delivery errors.

    Args:
        api_key: the SendGrid API key; it only ever leaves as the ``Authorization`` header.
        host: the API base URL (EU: ``https://api.eu.sendgrid.com``; tests: a local fake).
        timeout_s: the read, write and pool timeout.
        connect_timeout_s: the TCP/TLS connect timeout.
        default_from: the sender when a payload names none (config ``from:``).
        max_connections: the size of the keep-alive pool.
        clock: epoch seconds now, to turn rate-limit reset times into delays.
    """

    name = "sendgrid"

    def __init__(
        self,
        api_key: Secret,
        *,
        default_from: Address,
        host: str = DEFAULT_HOST,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api_key = api_key
        self._default_from = default_from
        self._host = host.rstrip("/")
        self._clock = clock
        self._client = httpx.Client(
            base_url=self._host,
            headers={
                "Authorization": f"Bearer {api_key.reveal()}",
                "Content-Type": "application/json",
            },
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def __repr__(self) -> str:
        return f"SendGridProvider(host={redact_url(self._host)!r})"

    def send(self, emails: Sequence[Email]) -> Accepted:
        """Send one batch as one request; see :class:`trigmail.providers.base.Provider`."""
        _check_batch(emails)
        body = build_body(emails, self._default_from)
        content = _COMPACT.encode(body).encode()
        logger.debug(
            "sendgrid %s: sending %d emails (%d bytes)", emails[0].key, len(emails), len(content)
        )
        trace = _SendTrace()
        try:
            response = self._client.post(SEND_PATH, content=content, extensions={"trace": trace})
        except httpx.TransportError as exc:
            error = self._scrub(classify(exc, now_s=self._clock(), bytes_sent=trace.bytes_sent))
            logger.debug("sendgrid %s: %s", emails[0].key, error)
            raise error from exc
        outcome = classify(response, now_s=self._clock())
        if isinstance(outcome, DeliveryError):
            error = self._scrub(outcome)
            logger.debug("sendgrid %s: %s", emails[0].key, error)
            raise error
        logger.debug("sendgrid %s: accepted as %s", emails[0].key, outcome.message_id)
        return outcome

    def close(self) -> None:
        self._client.close()

    def _scrub(self, error: DeliveryError) -> DeliveryError:
        # SendGrid never echoes the key, but a proxy in between might: never let it through.
        key = self._api_key.reveal()
        if not key or key not in error.detail:
            return error
        detail = error.detail.replace(key, REDACTED)
        if isinstance(error, RetryableDeliveryError):
            return RetryableDeliveryError(detail, retry_after_s=error.retry_after_s)
        if isinstance(error, PermanentDeliveryError):
            return PermanentDeliveryError(detail, error.status_code)
        return type(error)(detail)


def load_api_key(
    env: str | None = None,
    file: Path | None = None,
    credential: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Secret | None:
    """Load the API key from a systemd credential, a file or an environment variable.

    The first source that holds a key wins, in that order; the trailing newline is stripped.

    Args:
        env: the name of an environment variable (``SENDGRID_API_KEY``).
        file: a file holding the key; it must exist when named.
        credential: a systemd credential name, read from ``$CREDENTIALS_DIRECTORY``.
        environ: the environment to read (default ``os.environ``).

    Returns:
        The key, or ``None`` when no source holds one (the caller falls back to the outbox).

    Raises:
        ConfigError: the named file cannot be read or is empty.
    """
    environ = os.environ if environ is None else environ
    credentials_dir = environ.get("CREDENTIALS_DIRECTORY")
    if credential and credentials_dir:
        path = Path(credentials_dir) / credential
        if path.is_file():
            return _read_key_file(path)
    if file is not None:
        return _read_key_file(file)
    value = environ.get(env, "").rstrip("\r\n") if env else ""
    return Secret(value) if value else None


def _read_key_file(path: Path) -> Secret:
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"cannot read the SendGrid API key from {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        # The decode error would quote bytes of the key: say what is wrong, without it.
        raise ConfigError(f"the SendGrid API key file {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"the SendGrid API key file {path} is empty")
    return Secret(value)
