"""The fake SendGrid's Event Webhook: signed events posted back for every accepted request.

SendGrid reports each message it accepted, whatever became of the HTTP answer (a request the
fake hung or reset after accepting is reported too). Delivery is configurable the way the real
one misbehaves: late (``delay_s``), batches posted twice (``duplicate_rate``), batches out of
order (``reorder``), and events lost for good (``loss_rate``). A refused or failed post is tried
again, as SendGrid retries non-2xx answers.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from tests.webhook_client import post, signed_headers

logger = logging.getLogger(__name__)

# How long a failed post waits before its next try (SendGrid backs off for minutes; tests can't).
RETRY_S = 0.2
POLL_S = 0.01


@dataclass(frozen=True)
class WebhookFaults:
    """How the fake's webhook misbehaves.

    Attributes:
        delay_s: each batch is posted this long after its request was accepted.
        duplicate_rate: the chance a batch is posted a second time.
        reorder: post the batches ready at once in a random order, and each batch's events too.
        loss_rate: the chance each event is never posted.
        events: the event types reported per accepted message, in order.
    """

    delay_s: float = 0.0
    duplicate_rate: float = 0.0
    reorder: bool = False
    loss_rate: float = 0.0
    events: tuple[str, ...] = ("processed", "delivered")


class WebhookPoster:
    """Posts signed events for accepted requests to ``url`` from a thread, until :meth:`stop`.

    Args:
        url: trigmail's webhook endpoint, or several (each post goes to the next, in turn, as
            SendGrid's posts reach any of several workers behind a balancer).
        private_key: signs each post, as SendGrid's key does.
        faults: delay, duplicates, reordering and loss.
        seed: seeds every random choice.
    """

    def __init__(
        self,
        url: str | list[str],
        private_key: ec.EllipticCurvePrivateKey,
        faults: WebhookFaults | None = None,
        seed: int = 0,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        self.posts_by_url: dict[str, int] = dict.fromkeys(self.urls, 0)
        self._turn = 0
        self._key = private_key
        self.faults = faults or WebhookFaults()
        self._rng = random.Random(seed)
        self._pending: list[tuple[float, list[dict[str, Any]]]] = []  # (due, batch)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self.posted: list[dict[str, Any]] = []  # every event posted with a 2xx (copies kept)
        self.lost: list[dict[str, Any]] = []
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="fake-webhook", daemon=True)
        self._thread.start()

    def accepted(self, body: Mapping[str, Any], message_id: str) -> None:
        """Report an accepted ``/v3/mail/send`` body: events for each personalization."""
        batch = []
        now_s = time.time()
        for index, personalization in enumerate(body.get("personalizations") or ()):
            args = {**(body.get("custom_args") or {}), **(personalization.get("custom_args") or {})}
            for kind in self.faults.events:
                to = (personalization.get("to") or [{}])[0].get("email", "")
                batch.append(
                    {
                        "email": to,
                        "timestamp": int(now_s),
                        "event": kind,
                        "sg_event_id": uuid.uuid4().hex,
                        "sg_message_id": f"{message_id}.filterdrecv-{index}",
                        **args,
                    }
                )
        with self._lock:
            kept = [e for e in batch if self._rng.random() >= self.faults.loss_rate]
            self.lost += [e for e in batch if e not in kept]
            due = now_s + self.faults.delay_s
            if kept:
                self._pending.append((due, kept))
                if self._rng.random() < self.faults.duplicate_rate:
                    self._pending.append((due, list(kept)))
            self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every batch reported so far was posted with a 2xx."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._pending, timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _take_due(self) -> list[list[dict[str, Any]]]:
        now_s = time.time()
        with self._lock:
            due = [batch for at, batch in self._pending if at <= now_s]
            self._pending = [(at, batch) for at, batch in self._pending if at > now_s]
            if self.faults.reorder:
                self._rng.shuffle(due)
                for batch in due:
                    self._rng.shuffle(batch)
            return due

    def _run(self) -> None:
        while not self._stop.is_set():
            due = self._take_due()
            if not due:
                self._stop.wait(POLL_S)
                continue
            for batch in due:
                self._post(batch)
            with self._lock:
                self._idle.notify_all()

    def _post(self, batch: list[dict[str, Any]]) -> None:
        body = json.dumps(batch).encode()
        url = self.urls[self._turn % len(self.urls)]
        self._turn += 1
        try:
            status = post(url, body, signed_headers(self._key, body))
        except OSError as exc:
            status = 0
            logger.debug("fake webhook: post failed: %s", exc)
        if 200 <= status < 300:
            with self._lock:
                self.posted += batch
                self.posts_by_url[url] += 1
            return
        self.failures += 1
        with self._lock:  # SendGrid tries again later
            self._pending.append((time.time() + RETRY_S, batch))
