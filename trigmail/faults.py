"""Kill points for the crash suite: a test-only switch, inert unless its variable is set.

``TRIGMAIL_KILL_AT=point`` (or ``point:n``) makes the process SIGKILL itself the n-th time
(default the first) it reaches ``point``, so the reliability tests can stop the daemon at the
exact moments that matter instead of hoping a random kill lands there.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from enum import StrEnum

log = logging.getLogger(__name__)

KILL_AT_ENV = "TRIGMAIL_KILL_AT"


class KillPoint(StrEnum):
    """The moments the crash suite reaches deliberately."""

    AFTER_READ = "after_read"  # events read, decisions not committed
    AFTER_COMMIT = "after_commit"  # decisions committed, source not acknowledged
    AFTER_CLAIM = "after_claim"  # `sending` committed, provider not called
    AFTER_ACCEPT = "after_accept"  # provider accepted, `sent` not recorded
    DURING_ROTATION = "during_rotation"  # the spool's old file drained, the new one not opened


class _Switch:
    """The kill switch read from the environment once, at import."""

    def __init__(self, spec: str) -> None:
        point, _, count = spec.partition(":")
        self.point = point
        self.count = int(count) if count.isdigit() and int(count) > 0 else 1
        self.reached = 0
        self.lock = threading.Lock()

    def hit(self, point: KillPoint) -> bool:
        if point.value != self.point:
            return False
        with self.lock:
            self.reached += 1
            return self.reached == self.count


_switch = _Switch(os.environ.get(KILL_AT_ENV, ""))


def reached(point: KillPoint) -> None:
    """Mark that ``point`` was reached; dies here if the switch names it (and its count)."""
    if _switch.hit(point):
        log.warning("kill point %s reached (%s): killing this process", point.value, KILL_AT_ENV)
        os.kill(os.getpid(), signal.SIGKILL)
