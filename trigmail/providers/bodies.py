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
from json.encoder import encode_basestring_ascii
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


def _goes_alone(email: Email) -> bool:
    """Whether ``email``'s custom args alone break the size limit: only its own send fails."""
    return _may_break_args_limit(email) and custom_args_bytes(email) >= MAX_CUSTOM_ARGS_BYTES


def build_body(emails: Sequence[Email], default_from: Address) -> dict[str, Any]:
    """Return the ``/v3/mail/send`` JSON body for a batch sharing one :func:`batch_key`."""
    body: dict[str, Any] = {"personalizations": [_personalization(email) for email in emails]}
    body.update(_message(emails[0], default_from))
    return body


def body_json(
    emails: Sequence[Email], default_from: Address, settings: Mapping[str, Any] | None = None
) -> bytes:
    """Return :func:`build_body` as :data:`COMPACT_JSON` encodes it, with ``settings`` (such as
    ``mail_settings``) after its keys: the same bytes, each personalization written as text
    rather than built as three dicts and a list and then walked by the encoder (a request
    carries up to a thousand)."""
    message = _message(emails[0], default_from)
    message.update(settings or {})
    personalizations = ",".join([_personalization_json(email) for email in emails])
    return f'{{"personalizations":[{personalizations}],{COMPACT_JSON.encode(message)[1:]}'.encode()


def _personalization_json(email: Email) -> str:
    # The text COMPACT_JSON writes for _personalization(email): ensure_ascii, so each string
    # as encode_basestring_ascii escapes it.
    payload = email.payload
    empty = isinstance(payload.data, Mapping) and not payload.data  # most templates' data
    data = "{}" if empty else COMPACT_JSON.encode(_plain(payload.data))
    args = (
        f'"trigmail_key":{encode_basestring_ascii(email.key)},'
        f'"trigmail_rule":{encode_basestring_ascii(email.rule_id)}'
    )
    if payload.variant is not None:
        args += f',"trigmail_variant":{encode_basestring_ascii(payload.variant)}'
    to = encode_basestring_ascii(email.to)
    return f'{{"to":[{{"email":{to}}}],"dynamic_template_data":{data},"custom_args":{{{args}}}}}'


def _message(email: Email, default_from: Address) -> dict[str, Any]:
    """The body's keys past ``personalizations``: what every email of the batch shares."""
    first = email.payload
    body: dict[str, Any] = {
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
        if _goes_alone(email):
            requests.append(_Request(emails=[email]))
            continue
        candidates = open_by_key.setdefault(batch_key(email), [])
        for request in candidates:
            if request.fits(email):
                break
        else:
            request = _Request()
            candidates.append(request)
            requests.append(request)
        request.add(email)
    return [request.emails for request in requests]


def fits_one_request(emails: Sequence[Email]) -> bool:
    """Whether :func:`split_batch` leaves ``emails`` in one request, without splitting them:
    what a provider checks of each batch it is handed, already split."""
    if not 0 < len(emails) <= _MAX_EMAILS_PER_REQUEST:
        return False
    if len({email.to.lower() for email in emails}) != len(emails):
        return False  # an address twice
    if len(emails) == 1:
        return True  # alone, even when its custom args break the size limit
    key = batch_key(emails[0])
    return all(batch_key(email) == key and not _goes_alone(email) for email in emails)
