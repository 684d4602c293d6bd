"""A source in memory, for tests and for embedding trigmail in another process.

Items enter with the time the clock gives at :meth:`MemorySource.put`; the watermark is the
entry time of the oldest item not yet acknowledged (the clock's time when there is none), as a
Redis group's is. Reads never block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from trigmail.ledger.base import DeadLetter
from trigmail.sources.base import SourceItem, utc_now


@dataclass(frozen=True)
class MemoryDeadLetter:
    """An item the daemon set aside, with its reason."""

    item: SourceItem
    reason: str
    detail: str


class MemorySource:
    """A list of items read in order by one reader.

    Args:
        clock: the time items enter at, and the watermark when all are acknowledged.
        name: the source's name (its position key in the ledger).
        ordered: whether the worker may move the watermark on by the items' own times, as
            for a spool; ``False`` behaves as one reader of a shared queue.
    """

    def __init__(
        self,
        clock: Callable[[], datetime] = utc_now,
        name: str = "memory",
        *,
        ordered: bool = True,
    ) -> None:
        self.name = name
        self.ordered = ordered
        self.dead: list[MemoryDeadLetter] = []
        self._clock = clock
        self._items: list[tuple[datetime, bytes]] = []
        self._next = 0  # index of the next item to read
        self._acked = 0  # every item before this index is acknowledged

    def put(self, data: bytes, entered_at: datetime | None = None) -> None:
        """Add an event line, entering at ``entered_at`` (default: now)."""
        self._items.append((self._clock() if entered_at is None else entered_at, data))

    def unread(self) -> int:
        """Return how many items have not been read yet."""
        return len(self._items) - self._next

    def start(self, position: str | None) -> None:
        self._next = self._acked = 0 if position is None else int(position)

    def read(self, max_items: int, timeout_s: float) -> list[SourceItem]:
        taken = self._items[self._next : self._next + max_items]
        first = self._next
        self._next += len(taken)
        return [
            SourceItem(data, str(first + offset + 1), f"{self.name}:{first + offset + 1}")
            for offset, (_, data) in enumerate(taken)
        ]

    def ack(self, items: Sequence[SourceItem]) -> None:
        if items:
            self._acked = max(self._acked, int(items[-1].position))

    def watermark(self) -> datetime | None:
        if self._acked < len(self._items):
            return self._items[self._acked][0]
        return self._clock()

    def dead_letter(self, item: SourceItem, reason: str, detail: str) -> None:
        self.dead.append(MemoryDeadLetter(item, reason, detail))

    def restore_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        return 0

    def close(self) -> None:
        pass
