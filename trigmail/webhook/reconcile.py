"""Settling in-doubt sends by evidence, as the serve loop's periodic chore.

The webhook settles a send the moment its evidence comes; this sweep settles the rest: sends
whose evidence came first (the request hung, the event arrived while the send was still
``sending``), and sends that became in doubt at a restart. It also sends again, once, the
``on_doubt: verify`` sends with no evidence after ``delivery.verify_after``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from trigmail.ledger.base import Ledger
from trigmail.webhook.observe import WebhookMetrics

logger = logging.getLogger(__name__)

# Bounds of the sweep's period: often enough that a short verify window is kept to, rarely
# enough that an idle ledger is not polled for nothing.
MIN_INTERVAL_S: Final = 0.2
MAX_INTERVAL_S: Final = 5.0
# Sends settled or resent per sweep at most, so one sweep never holds the ledger long.
BATCH: Final = 500


class Reconciler:
    """Settles in-doubt sends by evidence and resends unverified ones, every ``interval_s``.

    Args:
        ledger: the ledger the daemon writes.
        metrics: counts the sends settled and resent.
        verify_after_s: how long an ``on_doubt: verify`` send waits for evidence.
        monotonic: seconds of a clock that never goes back (the sweep's period).
    """

    def __init__(
        self,
        ledger: Ledger,
        metrics: WebhookMetrics,
        verify_after_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._metrics = metrics
        self._verify_after = timedelta(seconds=verify_after_s)
        self.interval_s = min(max(verify_after_s / 4, MIN_INTERVAL_S), MAX_INTERVAL_S)
        self._monotonic = monotonic
        self._next_s = 0.0

    def step(self, now: datetime) -> bool:
        """Sweep if the period is over; return whether any send was scheduled again."""
        if self._monotonic() < self._next_s:
            return False
        self._next_s = self._monotonic() + self.interval_s
        with self._ledger.transaction() as txn:
            settled = txn.settle_by_evidence(now, limit=BATCH)
            resent = txn.resend_unverified(now - self._verify_after, now, limit=BATCH)
        self._metrics.record_settled(settled)
        self._metrics.record_resent(resent)
        self._metrics.record_in_doubt(self._ledger.in_doubt_by_evidence())
        for send in settled:
            logger.info(
                "send %s: in doubt, settled as sent by evidence (%s)", send.key, send.reason
            )
        for send in resent:
            logger.warning(
                "send %s: in doubt with no delivery evidence after %s: sending again once",
                send.key,
                self._verify_after,
            )
        return bool(resent)
