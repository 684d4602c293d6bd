"""A dependency that stopped answering: since when, why, and when to try it again."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from trigmail.events import format_ts

# Waits between attempts to reach a dependency that is down: doubling from the first, capped.
RETRY_FIRST_S = 0.5
RETRY_CAP_S = 30.0


class Outage:
    """Tracks one dependency's failures for a back-off and a health report.

    Args:
        clock: the wall clock the outage's start is reported in.
        first_s: the wait after the first failure, doubled after each further one.
        cap_s: the longest wait.
    """

    def __init__(
        self,
        clock: Callable[[], datetime],
        first_s: float = RETRY_FIRST_S,
        cap_s: float = RETRY_CAP_S,
    ) -> None:
        self._clock = clock
        self._first_s = first_s
        self._cap_s = cap_s
        self.since: datetime | None = None
        self.why = ""
        self._wait_s = first_s
        self._retry_at = 0.0  # time.monotonic()

    def failed(self, why: str) -> None:
        """Note a failed attempt; the next is due after a wait twice the last one."""
        if self.since is None:
            self.since = self._clock()
            self._wait_s = self._first_s
        else:
            self._wait_s = min(self._wait_s * 2, self._cap_s)
        self.why = why
        self._retry_at = time.monotonic() + self._wait_s

    def recovered(self) -> datetime | None:
        """Note a success; return when the outage it ends began (``None``: there was none)."""
        since, self.since = self.since, None
        self._retry_at = 0.0
        return since

    def due(self) -> bool:
        """Whether an attempt may be made now (always, while up)."""
        return time.monotonic() >= self._retry_at

    def wait_until_due(self, deadline: float) -> bool:
        """Sleep until the next attempt is due, but not past ``deadline`` (``time.monotonic``);
        return whether it is due."""
        wait_s = self._retry_at - time.monotonic()
        if wait_s > 0:
            time.sleep(max(min(wait_s, deadline - time.monotonic()), 0.0))
        return self.due()

    def describe(self, what: str) -> str | None:
        """``None`` while up; else ``"<what> since <time>: <why>"``."""
        if self.since is None:
            return None
        return f"{what} since {format_ts(self.since)}: {self.why}"
