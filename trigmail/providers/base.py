"""The provider boundary: what the daemon hands a provider, and what it gets back.

A provider call carries a *batch*: one or more emails that share every message-level attribute
(see :func:`batch_key`), sent as one request with one personalization per email. The outcome of
the call (accepted, or one of the delivery errors) applies to every email of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from trigmail.decisions import Payload
from trigmail.records import record
from trigmail.rules.model import Address


@record
class Email:
    """One intended email.

    Attributes:
        key: its idempotency key; it travels to the provider in ``custom_args``.
        rule_id: the rule that scheduled it.
        to: the recipient's address.
        payload: template, data and message-level attributes frozen at scheduling.
    """

    key: str
    rule_id: str
    to: str
    payload: Payload


@record
class Accepted:
    """The provider took the request; ``message_id`` is its id for it, when it gave one."""

    message_id: str | None


class BatchKey(NamedTuple):
    """What emails must share to go out in one request: everything but recipient and data."""

    template: str
    from_: Address | None
    reply_to: Address | None
    categories: tuple[str, ...]
    asm_group: int | None


def batch_key(email: Email) -> BatchKey:
    """Return the message-level attributes of ``email``; equal keys may share a request."""
    payload = email.payload
    return BatchKey(
        template=payload.template,
        from_=payload.from_,
        reply_to=payload.reply_to,
        categories=payload.categories,
        asm_group=payload.asm_group,
    )


class Provider(Protocol):
    """Delivers batches of emails; implementations: SendGrid, outbox, recording."""

    name: str

    def send(self, emails: Sequence[Email]) -> Accepted:
        """Send one batch as one request.

        Every email must have the same :func:`batch_key`; the outcome applies to every one.

        Raises:
            RetryableDeliveryError: the request provably never reached the provider or was
                refused by it; sending again is safe.
            InDoubtDeliveryError: the provider may have processed the request.
            PermanentDeliveryError: the provider rejected the request for good.
            ValueError: the batch breaks the provider's request limits (a programming error:
                the caller must split it first).
        """
        ...

    def close(self) -> None:
        """Release connections and files; the provider is not used afterwards."""
        ...
