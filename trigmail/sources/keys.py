"""Every Redis key and field name trigmail uses, in one place (so ops know what to expect)."""

from __future__ import annotations

from typing import Final

DEFAULT_STREAM: Final = "trigmail:events"
"""The stream producers ``XADD`` events to; the ``trigmail:`` prefix keeps a shared Redis tidy."""

DEFAULT_GROUP: Final = "trigmail"
"""The consumer group: every worker of one deployment joins it, so each entry goes to one."""

DEAD_SUFFIX: Final = ":dead"
"""Appended to the stream's name for its dead letters: they live next to the stream they
came from, so two deployments on one Redis never mix them up."""

DEAD_MAXLEN: Final = 100_000
"""Approximate cap of a dead-letter stream: dead letters are kept for people to inspect, but a
producer that sends only garbage must not fill Redis's memory."""

DATA_FIELD: Final = b"data"
"""The entry field holding the whole event as JSON; without it the entry's fields are the
event (docs/design.md §1)."""

GROUP_START_ID: Final = "0"
"""Where a newly created group starts: at the stream's first entry, like a spool file never
seen before, so events written before the first start are not skipped."""

PENDING_START_ID: Final = "0"
"""``XREADGROUP`` from this id returns the consumer's own pending entries, not new ones."""

NEW_ENTRIES_ID: Final = ">"
"""``XREADGROUP`` from this id returns entries never delivered to any consumer of the group."""

CLAIM_START_ID: Final = "0-0"
"""Where an ``XAUTOCLAIM`` scan starts, and the cursor Redis returns when a scan is complete."""


CLIENT_NAME_PREFIX: Final = "trigmail:"
"""Our connections are named ``trigmail:<consumer>`` so that ``CLIENT LIST`` tells whose
they are (and ``CLIENT KILL`` can pick them)."""


def client_name(consumer: str) -> str:
    """Return the connection name of ``consumer``; Redis refuses spaces in client names."""
    return CLIENT_NAME_PREFIX + "_".join(consumer.split())


def dead_stream(stream: str) -> str:
    """Return the dead-letter stream of ``stream`` (``trigmail:events:dead``)."""
    return stream + DEAD_SUFFIX
