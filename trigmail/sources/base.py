"""The source boundary: one small consumer protocol, with a JSONL spool and a Redis stream
behind it.

The daemon's loop, which every source is built for::

    items = source.read(max_items, timeout_s)
    with ledger.transaction() as txn:          # one transaction per batch
        ...decide each item, or source.dead_letter(item, reason, detail)...
        txn.set_position(source.name, items[-1].position)
    source.ack(items)                           # only after the commit

A source therefore never forgets an item before it is acknowledged: after a crash it delivers
again everything after the committed position (spool) or everything not acknowledged (Redis).
Redelivery is safe because the ledger recognises an event it has already decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from trigmail.decisions import Reason
from trigmail.ledger.base import DeadLetter
from trigmail.records import record


@record
class SourceItem:
    """One raw event as a source delivered it (a record: one is made per event read).

    Attributes:
        data: the event's bytes as read, without the trailing newline.
        position: opaque text; committing it means this item and all before it are done.
        ref: a place a human can find the item at, for logs and dead letters
            (``events.jsonl:1234`` or ``trigmail:events 1700000000000-0``).
        deliveries: how many times the item was delivered (always 1 for the spool).
        order: text that sorts items as they entered the source, where several readers may
            decide them out of that order (a Redis entry id); ``None`` for one reader.
        entered_at: when the item entered the source, by the source's clock, where ``order``
            follows it (a Redis entry id's time); ``None`` otherwise.
        refused: the reason and detail of an item the source itself refuses to have decided
            (a line too long, an entry delivered too often): the daemon sets it aside as it
            does a bad event, so the ledger holds every dead letter, counted and logged once.
    """

    data: bytes
    position: str
    ref: str
    deliveries: int = 1
    order: str | None = None
    entered_at: datetime | None = None
    refused: tuple[str, str] | None = None


class SourceReason(StrEnum):
    """Why a source set an item aside on its own, before the daemon saw it."""

    LINE_TOO_LONG = Reason.LINE_TOO_LONG.value
    INCOMPLETE_LINE = Reason.INCOMPLETE_LINE.value
    TOO_MANY_DELIVERIES = Reason.TOO_MANY_DELIVERIES.value
    TOO_LARGE = Reason.TOO_LARGE.value
    TOO_DEEP = Reason.TOO_DEEP.value


class Source(Protocol):
    """A consumer of raw events: ``read`` a batch, commit it, then ``ack`` it."""

    name: str
    """A stable id, the ledger's position key: ``spool:<abs path>`` or ``redis:<stream>``."""

    ordered: bool
    """Whether this reader alone reads the source, in the order items entered it: then the
    times the items carry may move the watermark on (see :mod:`trigmail.worker`)."""

    def start(self, position: str | None) -> None:
        """Begin reading after ``position``, the last one committed (``None``: never read)."""
        ...

    def read(self, max_items: int, timeout_s: float) -> list[SourceItem]:
        """Return up to ``max_items`` items in order, waiting at most ``timeout_s`` for the first.

        Returns ``[]`` when nothing came in time; never blocks longer than ``timeout_s``.

        Raises:
            SourceError: when the source cannot be read now; the next call tries again.
        """
        ...

    def ack(self, items: Sequence[SourceItem]) -> None:
        """Acknowledge items whose decisions (and position) the ledger has committed."""
        ...

    def watermark(self) -> datetime | None:
        """Return a time before which every item that entered the source has been read and
        acknowledged (by this reader or another); ``None`` when not known (yet)."""
        ...

    def dead_letter(self, item: SourceItem, reason: str, detail: str) -> None:
        """Set a bad item aside, durably, with a stable ``reason`` and a human ``detail``."""
        ...

    def restore_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """On start, set aside again those of the last batch's ``letters`` (the ledger's copy)
        that a crash kept from this source's dead-letter place; return how many."""
        ...

    def close(self) -> None:
        """Release files and connections; the source may be started again afterwards."""
        ...


def raw_text(data: bytes) -> str:
    """Return ``data`` as text for a dead letter, invalid UTF-8 replaced rather than lost."""
    return data.decode("utf-8", errors="replace")


def utc_now() -> datetime:
    """The default clock of dead letters' ``at``."""
    return datetime.now(UTC)
