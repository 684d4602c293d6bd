"""The Redis stream source: one member of a consumer group, reading with ``XREADGROUP``.

- The group is created if missing (``MKSTREAM``), starting at the stream's first entry.
- On start (and after every reconnect) the consumer's own pending entries are read first;
  then ``XAUTOCLAIM`` takes entries idle longer than ``min_idle_s`` from dead consumers; then
  new entries are read with a blocking ``XREADGROUP``.
- An entry is acknowledged (``XACK``) only by :meth:`RedisStreamSource.ack`, after the ledger
  commit, or when it is set aside in ``<stream>:dead``. An entry delivered more than
  ``max_deliveries`` times is refused (``too_many_deliveries``): the daemon sets it aside.
- An entry's ``data`` field holds the event as JSON. Without it, the entry's fields are the
  event: names and values are decoded as UTF-8 and every value stays a string (Redis has no
  types; use ``data`` for numbers), and dotted names build nested objects
  (``user.first_name`` → ``{"user": {"first_name": ...}}``). When dotted names collide with
  another field (``user`` and ``user.name``), all the entry's fields are kept flat instead.
- An entry whose fields add up to more than ``max_entry_bytes`` (1 MiB, the spool's line limit)
  is set aside as ``too_large`` before any JSON is built from it, its ``raw`` cut to its first
  KiB; flat fields that would nest deeper than events may (a name of more than 64 dotted
  segments) are set aside as ``too_deep``. The delivery count is checked before either, so an
  entry that crashed a worker ``max_deliveries`` times is not looked into again.
- Redis unreachable at start is no error: the reads try again with a growing back-off, and
  :meth:`RedisStreamSource.health` says what is wrong meanwhile.
- ``redis://`` and ``rediss://`` URLs, with passwords; the password is never logged or raised.

The connection, the group's creation and the two Lua scripts (watermark, set aside) are
:mod:`trigmail.sources.redis_group`; what an entry holds is :mod:`trigmail.sources.redis_entries`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import redis
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

from trigmail.errors import SourceError
from trigmail.events import MAX_EVENT_BYTES, format_ts
from trigmail.ledger.base import DeadLetter
from trigmail.sources import keys
from trigmail.sources.base import SourceItem, raw_text, utc_now
from trigmail.sources.redis_entries import entry_order, entry_time, flat_fields_json, refusal
from trigmail.sources.redis_group import ConsumerGroup

logger = logging.getLogger(__name__)

# A blocking read holds the socket silent for up to ``block_s``: the socket timeout must be
# longer, yet finite so that a vanished server is noticed.
_SOCKET_MARGIN_S = 10.0

Entry = tuple[bytes, dict[bytes, bytes]]


def _entries(reply: Any) -> list[Entry]:
    """Return the entries of an ``XREADGROUP`` reply on one stream."""
    return list(reply[0][1]) if reply else []


class RedisStreamSource:
    """Read events from a Redis stream as a member of a consumer group.

    Args:
        url: ``redis://`` or ``rediss://`` URL, possibly with a password.
        stream: the stream producers ``XADD`` to.
        group: the consumer group shared by all workers.
        consumer: this worker's name in the group; ``<hostname>-<pid>`` by default.
        block_s: the longest one ``XREADGROUP`` blocks; also bounds how late a reclaim runs.
        min_idle_s: entries pending this long with another consumer are claimed.
        max_deliveries: an entry delivered more often is set aside as ``too_many_deliveries``.
        count: the most entries asked of Redis in one command.
        max_entry_bytes: a larger entry (names and values) is set aside as ``too_large``.
        clock: the time dead letters are stamped with.
    """

    def __init__(
        self,
        url: str,
        stream: str = keys.DEFAULT_STREAM,
        *,
        group: str = keys.DEFAULT_GROUP,
        consumer: str | None = None,
        block_s: float = 1.0,
        min_idle_s: float = 60.0,
        max_deliveries: int = 5,
        count: int = 500,
        max_entry_bytes: int = MAX_EVENT_BYTES,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.name = f"redis:{stream}"
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.dead_stream = keys.dead_stream(stream)
        self.block_s = block_s
        self.min_idle_s = min_idle_s
        self.max_deliveries = max_deliveries
        self.count = count
        self.max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._group = ConsumerGroup(
            url,
            stream,
            group,
            self.consumer,
            socket_timeout_s=block_s + _SOCKET_MARGIN_S,
            clock=clock,
            on_connect=self._reread_pending,
        )
        self._started = False
        # Cursor into our own pending entries while they are re-read; None once done.
        self._pending_from: str | None = keys.PENDING_START_ID
        self._claim_from = keys.CLAIM_START_ID
        self._next_claim_at = 0.0

    def start(self, position: str | None) -> None:
        """Connect and join the group; ``position`` is informational (``XACK`` is what counts).

        Redis unreachable (or refusing us) is logged once and left to the reads, which try
        again with a back-off: the daemon starts all the same, and :meth:`health` says why.

        Raises:
            SourceError: when the URL is malformed: no retry can mend it.
        """
        self.close()
        self._started = True
        try:
            self._group.guarded(self._group.client)
        except SourceError as exc:
            if isinstance(exc.__cause__, redis.RedisError):
                logger.warning("source %s: %s; reads will retry", self.name, exc)
                return
            raise

    def health(self) -> str | None:
        """``None`` while Redis answers; else why not, and since when (for ``/healthz``)."""
        return self._group.outage.describe("redis unreachable")

    def read(self, max_items: int, timeout_s: float) -> list[SourceItem]:
        """Return own pending, then reclaimed, then new entries; wait up to ``timeout_s``.

        Raises:
            SourceError: when Redis fails; the next call reconnects.
        """
        if not self._started:
            raise RuntimeError("RedisStreamSource.read() called before start()")
        deadline = time.monotonic() + timeout_s
        # Redis down: no new connection before the back-off is over; nothing came meanwhile.
        if not self._group.connected and not self._group.outage.wait_until_due(deadline):
            return []
        return self._group.guarded(lambda: self._read_until(min(max_items, self.count), deadline))

    def ack(self, items: Sequence[SourceItem]) -> None:
        """``XACK`` the items: call only once their decisions are committed."""
        if items:
            ids = [item.position for item in items]
            self._group.guarded(lambda: self._group.client().xack(self.stream, self.group, *ids))

    def dead_letter(self, item: SourceItem, reason: str, detail: str) -> None:
        """Add the item to ``<stream>:dead`` with its reason, then acknowledge it.

        Not logged here: the daemon, which chose the reason, logs and counts it.
        """
        self._group.guarded(lambda: self._set_aside(item, reason, detail))

    #: Several consumers share the group: only the group's own state bounds the watermark.
    ordered = False

    def watermark(self) -> datetime | None:
        """Return a time before which every entry of the stream has been acknowledged by some
        consumer of the group (its script: :mod:`.redis_group`); ``None`` when Redis cannot tell.

        The oldest entry not yet acknowledged may be held by a consumer that died: it holds
        the watermark until it comes back under its name, or another claims the entry.
        """
        return self._group.watermark()

    def restore_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Nothing to restore: a letter is added atomically with its entry's ``XACK``, and an
        entry not acknowledged is delivered again and decided again."""
        return 0

    def close(self) -> None:
        self._group.close()
        self._started = False

    def _reread_pending(self) -> None:
        # Whatever was delivered to us before the connection broke is read again first.
        self._pending_from = keys.PENDING_START_ID

    # -- reading -------------------------------------------------------------------------

    def _read_until(self, max_items: int, deadline: float) -> list[SourceItem]:
        client = self._group.client()
        while True:
            items = self._read_once(client, max_items, deadline)
            if items or time.monotonic() >= deadline:
                return items

    def _read_once(self, client: redis.Redis, max_items: int, deadline: float) -> list[SourceItem]:
        if self._pending_from is not None:
            return self._own_pending(client, self._pending_from, max_items)
        if time.monotonic() >= self._next_claim_at:
            items = self._reclaim(client, max_items)
            if items:
                return items
        return self._new_entries(client, max_items, deadline)

    def _own_pending(self, client: redis.Redis, cursor: str, max_items: int) -> list[SourceItem]:
        streams: dict[KeyT, StreamIdT] = {self.stream: cursor}
        entries = _entries(client.xreadgroup(self.group, self.consumer, streams, count=max_items))
        if not entries:
            self._pending_from = None
            return []
        self._pending_from = entries[-1][0].decode()
        logger.info("source %s: %d own pending entries delivered again", self.name, len(entries))
        return self._admit(client, entries)

    def _reclaim(self, client: redis.Redis, max_items: int) -> list[SourceItem]:
        reply = client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=int(self.min_idle_s * 1000),
            start_id=self._claim_from,
            count=max_items,
        )
        cursor, entries = reply[0].decode(), reply[1]
        self._claim_from = cursor
        # A finished scan waits; an unfinished one continues on the next read.
        done = cursor == keys.CLAIM_START_ID
        self._next_claim_at = time.monotonic() + (min(self.min_idle_s, self.block_s) if done else 0)
        if not entries:
            return []
        logger.info("source %s: claimed %d idle entries", self.name, len(entries))
        return self._admit(client, entries)

    def _new_entries(
        self, client: redis.Redis, max_items: int, deadline: float
    ) -> list[SourceItem]:
        block_ms = int(min(deadline - time.monotonic(), self.block_s) * 1000)
        streams: dict[KeyT, StreamIdT] = {self.stream: keys.NEW_ENTRIES_ID}
        reply = client.xreadgroup(
            self.group,
            self.consumer,
            streams,
            count=max_items,
            # BLOCK 0 would wait forever: too little time left means a plain poll.
            block=block_ms if block_ms > 0 else None,
        )
        return self._decidable(client, [(*entry, 1) for entry in _entries(reply)])

    def _admit(self, client: redis.Redis, entries: list[Entry]) -> list[SourceItem]:
        """Turn entries delivered again into items, setting aside those delivered too often."""
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            # Deleted or trimmed from the stream while pending: nothing is left to decide.
            logger.warning("source %s: %d pending entries no longer exist", self.name, len(gone))
            client.xack(self.stream, self.group, *gone)
        live = [(entry_id, fields) for entry_id, fields in entries if fields]
        counts = self._delivery_counts(client, [entry_id for entry_id, _ in live])
        return self._decidable(
            client, [(entry_id, fields, counts.get(entry_id, 1)) for entry_id, fields in live]
        )

    def _decidable(
        self, client: redis.Redis, entries: list[tuple[bytes, dict[bytes, bytes], int]]
    ) -> list[SourceItem]:
        """Turn entries into items, setting aside those delivered too often, too large or too
        deep, in that order: the delivery count first, so that an entry that made a worker
        fail is not looked into again."""
        items: list[SourceItem] = []
        for entry_id, fields, deliveries in entries:
            refused = refusal(fields, deliveries, self.max_deliveries, self.max_entry_bytes)
            if refused is None:
                items.append(self._item(entry_id, fields, deliveries))
                continue
            # Decided as set aside by the daemon, which puts the letter in the ledger and
            # then here (dead_letter: the dead stream and the XACK, atomically).
            reason, detail, raw = refused
            entry = entry_id.decode()
            why = (reason.value, detail)
            items.append(
                SourceItem(
                    raw,
                    entry,
                    self._ref(entry),
                    deliveries,
                    entry_order(entry),
                    entry_time(entry),
                    why,
                )
            )
        return items

    def _delivery_counts(self, client: redis.Redis, entry_ids: list[bytes]) -> dict[bytes, int]:
        pipe = client.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        counts: dict[bytes, int] = {}
        for reply in pipe.execute():
            for pending in reply:
                counts[pending["message_id"]] = int(pending["times_delivered"])
        return counts

    def _item(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> SourceItem:
        entry = entry_id.decode()
        data = fields.get(keys.DATA_FIELD)
        if data is None:
            data = flat_fields_json(fields)
        order = entry_order(entry)
        return SourceItem(data, entry, self._ref(entry), deliveries, order, entry_time(entry))

    def _ref(self, entry: str) -> str:
        return f"{self.stream} {entry}"

    def _set_aside(self, item: SourceItem, reason: str, detail: str) -> None:
        letter: dict[FieldT, EncodableT] = {
            "reason": str(reason),
            "detail": detail,
            "ref": item.ref,
            "raw": raw_text(item.data),
            "at": format_ts(self._clock()),
            "consumer": self.consumer,
        }
        self._group.set_aside(item.position, letter)
