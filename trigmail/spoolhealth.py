"""Whether a spool path can ever be read, for ``/healthz``: a mistyped path must not look
healthy (docs/design.md §4).

A missing or unreadable directory is unhealthy at once: nothing would ever be read. A missing
file is normal for a while (producers create it with their first event); missing for longer
than a grace period, it is unhealthy too, with the reason.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

# How long the spool file may be missing before /healthz says so.
MISSING_GRACE_S: Final = 300.0


class SpoolPathHealth:
    """Tracks how long the spool file has been missing; :meth:`problem` says what is wrong.

    Args:
        path: the spool.
        grace_s: how long a missing file is still healthy.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        path: Path,
        grace_s: float = MISSING_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.grace_s = grace_s
        self.clock = clock
        self._lock = threading.Lock()  # /healthz calls from the metrics server's threads
        self._missing_since: float | None = None
        self.problem()  # the grace starts when serve does

    def problem(self) -> str | None:
        """Why the spool cannot be read, else ``None``."""
        parent = self.path.absolute().parent
        if not parent.is_dir():
            return f"spool not read: its directory {parent} does not exist"
        if not os.access(parent, os.R_OK | os.X_OK):
            return f"spool not read: its directory {parent} cannot be read"
        now_s = self.clock()
        with self._lock:
            if os.path.lexists(self.path):
                self._missing_since = None
                return None
            if self._missing_since is None:
                self._missing_since = now_s
            missing_s = now_s - self._missing_since
        if missing_s <= self.grace_s:
            return None
        return (
            f"spool not read: no file at {self.path} for {missing_s:.0f}s (do producers write it?)"
        )
