"""SendGrid v3 ``/v3/mail/send`` request bodies and SendGrid's per-request limits.

Pure: shared by the SendGrid provider, the outbox (which writes the same bodies) and the
pipeline (which groups due sends into requests), without the HTTP client. A body is a plain
dict rather than ``sendgrid.helpers.mail`` objects: a templated send is a handful of fields,
the dict shows the exact JSON that goes out, and the helpers' object model would add a
translation layer to test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trigmail.providers.base import BatchKey, Email, batch_key
from trigmail.rules.model import Address

# SendGrid's documented per-request limits (docs/design.md §3).
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_CATEGORIES = 10
MAX_CUSTOM_ARGS_BYTES = 10_000  # the custom args must stay strictly under this
# Each personalization has exactly one recipient, so one number bounds both limits.
_MAX_EMAILS_PER_REQUEST = min(MAX_PERSONALIZATIONS, MAX_RECIPIENTS)


# Built once: json.dumps with options builds a new encoder per call (once per email here).
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def custom_args(email: Email) -> dict[str, str]:
    """Return the ``custom_args`` that match SendGrid's records and webhooks to the ledger."""
    args = {"trigmail_key": email.key, "trigmail_rule": email.rule_id}
    if email.payload.variant is not None:
        args["trigmail_variant"] = email.payload.variant
    return args


def custom_args_bytes(email: Email) -> int:
    """Return the size of ``email``'s custom args as compact UTF-8 JSON."""
    return len(COMPACT_JSON.encode(custom_args(email)).encode())


def _may_break_args_limit(email: Email) -> bool:
    # A character encodes to at most 12 bytes (a surrogate pair as two \uXXXX escapes), and the
    # JSON around the values is under 80: below this, encoding them is not worth its cost.
    variant = email.payload.variant or ""
    return 12 * (len(email.key) + len(email.rule_id) + len(variant)) + 80 >= MAX_CUSTOM_ARGS_BYTES


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
