"""A provider that only records: for ``simulate`` and for tests of the code that calls providers."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from trigmail.errors import DeliveryError
from trigmail.providers.base import Accepted, Email


class RecordingProvider:
    """Records every email it accepts in :attr:`sent`; can be told to fail the next calls.

    Attributes:
        sent: every email accepted, in order.
        calls: every batch it was given, accepted or not, in order.
    """

    name = "recording"

    def __init__(self) -> None:
        self.sent: list[Email] = []
        self.calls: list[list[Email]] = []
        self.closed = False
        self._failures: list[DeliveryError] = []
        self._accepted_count = 0
        # The daemon may send from several threads; the lists stay consistent under one lock.
        self._lock = threading.Lock()

    def fail_next(self, error: DeliveryError, times: int = 1) -> None:
        """Raise ``error`` from the next ``times`` calls to :meth:`send`, after those queued."""
        with self._lock:
            self._failures.extend([error] * times)

    def send(self, emails: Sequence[Email]) -> Accepted:
        """Record the batch; raise the next queued error, if any, instead of accepting it."""
        with self._lock:
            self.calls.append(list(emails))
            if self._failures:
                raise self._failures.pop(0)
            self.sent.extend(emails)
            self._accepted_count += 1
            return Accepted(message_id=f"recording-{self._accepted_count}")

    def close(self) -> None:
        self.closed = True
