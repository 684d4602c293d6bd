"""A bounded in-memory view of the sends that fall due soon.

The ledger holds every ``scheduled`` send; this heap caches only those due within a horizon,
refilled from the ledger's due-time index, so memory stays bounded with millions pending and a
restart loses nothing.
"""

from __future__ import annotations

import heapq
from datetime import datetime, timedelta

from trigmail.ledger.base import LedgerTxn, SendRecord

# A heap entry ``(due_at, key, send)``: a tuple, compared in C. The key breaks ties (it is
# unique in the heap, so sends are never compared), which makes every worker take sends due at
# one instant in the same order: workers locking the same users in different orders deadlocked.
_Entry = tuple[datetime, str, SendRecord]


class Scheduler:
    """Due sends, earliest first, for the next ``horizon_s`` seconds.

    Args:
        horizon_s: how far ahead to cache; a send due later is read from the ledger when the
            horizon reaches it.
        max_entries: the most sends held at once; past it, the horizon shrinks to what fits.
    """

    def __init__(self, horizon_s: float = 300.0, max_entries: int = 50_000) -> None:
        self.horizon_s = horizon_s
        self.max_entries = max_entries
        self._heap: list[_Entry] = []
        self._keys: set[str] = set()
        self._loaded_until: datetime | None = None
        # The cached sends due by then come before every send not cached: they fire in order
        # with no refill, even once the horizon has run out. A backlog larger than
        # ``max_entries`` is then read once per heap fired, not once per turn (at 60,000 due
        # sends, 50,000 rows were read and decoded for every 1,000 fired).
        self._ordered_until: datetime | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def needs_refill(self, now: datetime) -> bool:
        """Return whether the ledger must be read before the next send fires: the horizon was
        never loaded, or it has run out and no cached send is left that comes before every
        send it did not load."""
        if self._loaded_until is None or self._ordered_until is None:
            return True
        if self._loaded_until > now:
            return False
        return not (self._heap and self._heap[0][0] <= self._ordered_until)

    def refill(self, txn: LedgerTxn, now: datetime) -> None:
        """Reload the heap with the sends due up to ``now + horizon_s``, ``max_entries`` at most."""
        until = now + timedelta(seconds=self.horizon_s)
        sends = txn.due_sends(until, self.max_entries)
        ordered_until = until
        if len(sends) >= self.max_entries:
            # Sends due at exactly the last loaded instant may not all fit: stop just before it.
            until = ordered_until = sends[-1].due_at - timedelta(microseconds=1)
            # Unless all of them are due at that instant: keep them, or none would ever fire.
            # They are the ledger's first at that instant (it reads in due order, then key
            # order), so they fire before the rest of it, which the next refill loads.
            if sends[0].due_at <= until:
                sends = [send for send in sends if send.due_at <= until]
            else:
                ordered_until = sends[0].due_at
        self._heap = [(send.due_at, send.key, send) for send in sends]
        heapq.heapify(self._heap)
        self._keys = {send.key for send in sends}
        self._loaded_until = until
        self._ordered_until = ordered_until

    def invalidate(self) -> None:
        """Forget the loaded horizon, so the next refill reads the ledger again (a send
        scheduled by another process, such as ``trigmail ledger resolve``, is seen at once)."""
        self._loaded_until = self._ordered_until = None

    def add(self, send: SendRecord) -> None:
        """Cache a newly scheduled (or deferred) send if it falls inside the loaded horizon."""
        if self._loaded_until is None or self._ordered_until is None or send.key in self._keys:
            return
        if send.due_at > self._loaded_until:
            # Left to the ledger: no cached send due at or after it fires before a refill.
            before = send.due_at - timedelta(microseconds=1)
            self._ordered_until = min(self._ordered_until, before)
            return
        if len(self._heap) >= self.max_entries:
            # Full: forget the far end of the horizon; the ledger still has it.
            before = send.due_at - timedelta(microseconds=1)
            self._loaded_until = min(self._loaded_until, before)
            self._ordered_until = min(self._ordered_until, before)
            return
        heapq.heappush(self._heap, (send.due_at, send.key, send))
        self._keys.add(send.key)

    def pop_due(self, now: datetime, limit: int) -> list[SendRecord]:
        """Remove and return up to ``limit`` sends due at or before ``now``, earliest first, of
        those that come before every send not cached."""
        due: list[SendRecord] = []
        by = self._fires_by(now)
        while self._heap and len(due) < limit and self._heap[0][0] <= by:
            send = heapq.heappop(self._heap)[2]
            self._keys.discard(send.key)
            due.append(send)
        return due

    def due_keys(self, until: datetime) -> list[str]:
        """The keys of the cached sends that :meth:`pop_due` would take by ``until``, in no
        order: the heap's branches are walked down to the first entry due later, so a few due
        among many cost a few."""
        heap = self._heap
        until = self._fires_by(until)
        keys: list[str] = []
        stack = [0] if heap else []
        while stack:
            index = stack.pop()
            due_at, key, _ = heap[index]
            if due_at <= until:
                keys.append(key)
                stack.extend(child for child in (2 * index + 1, 2 * index + 2) if child < len(heap))
        return keys

    def _fires_by(self, now: datetime) -> datetime:
        return now if self._ordered_until is None else min(now, self._ordered_until)

    def count_due(self, after: datetime | None, until: datetime) -> int:
        """Count the cached sends due after ``after`` (``None``: any time) and by ``until``."""
        return sum(
            1
            for due_at, _, _ in self._heap
            if due_at <= until and (after is None or due_at > after)
        )

    def next_due_at(self) -> datetime | None:
        """Return when the earliest cached send falls due, or ``None`` when none is cached."""
        return self._heap[0][0] if self._heap else None

    @property
    def loaded_until(self) -> datetime | None:
        """The end of the loaded horizon: every send due by then is cached."""
        return self._loaded_until
