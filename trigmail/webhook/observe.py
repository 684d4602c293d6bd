"""The webhook's Prometheus metrics, registered beside the daemon's (docs/webhook.md)."""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from trigmail.evidence import DeliveryEvent, DeliveryEventType, EvidenceState
from trigmail.sends import SendRecord
from trigmail.webhook.signature import Rejection

ACCEPTED: Final = "accepted"
LEDGER_ERROR: Final = "ledger_error"
# A rule label from an event's custom args is trusted only in the shape of a rule id; anything
# else (mail of another app with the same arg name) would let label values grow without bound.
_RULE_ID: Final = re.compile(r"[a-z0-9-]{1,64}")
OTHER_RULE: Final = "unknown"


def rule_label(rule_id: str) -> str:
    """Return ``rule_id`` as a metric label: itself when it has the shape of a rule id."""
    return rule_id if _RULE_ID.fullmatch(rule_id) else OTHER_RULE


class WebhookMetrics:
    """Counters of webhook requests, events, and the sends evidence settled or verify resent.

    Args:
        registry: the daemon's registry (``Metrics.registry``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "trigmail_webhook_requests_total",
            "Event Webhook requests, by outcome (accepted, or why refused).",
            ["outcome"],
            registry=registry,
        )
        self.events = Counter(
            "trigmail_webhook_events_total",
            "Event Webhook events stored (first delivery only), by rule and event type.",
            ["rule", "event"],
            registry=registry,
        )
        self.duplicates = Counter(
            "trigmail_webhook_duplicate_events_total",
            "Event Webhook events received again (same sg_event_id) and ignored.",
            registry=registry,
        )
        self.skipped = Counter(
            "trigmail_webhook_skipped_events_total",
            "Event Webhook items not stored: foreign (mail trigmail did not send) or invalid.",
            ["why"],
            registry=registry,
        )
        self.settled = Counter(
            "trigmail_sends_settled_by_evidence_total",
            "In-doubt sends made sent by webhook evidence, by rule.",
            ["rule"],
            registry=registry,
        )
        self.resent = Counter(
            "trigmail_sends_resent_unverified_total",
            "In-doubt sends under on_doubt: verify sent again after delivery.verify_after "
            "without evidence, by rule.",
            ["rule"],
            registry=registry,
        )
        self.in_doubt = Gauge(
            "trigmail_sends_in_doubt_by_evidence",
            "Sends in doubt, by evidence state (awaiting_evidence, awaiting_verify, "
            "resent_no_evidence, evidence_received); updated by serve's sweep.",
            ["evidence"],
            registry=registry,
        )
        # Every outcome exists from the start, so rate() and alerts see a zero, not a gap.
        for outcome in (ACCEPTED, LEDGER_ERROR, *Rejection):
            self.requests.labels(outcome=outcome)
        for why in ("foreign", "invalid"):
            self.skipped.labels(why=why)

    def record_request(self, outcome: str) -> None:
        self.requests.labels(outcome=outcome).inc()

    def record_events(self, stored: Iterable[DeliveryEvent], duplicates: int) -> None:
        # Counted first: a label lookup per event cost more than the rest of the counting.
        for (rule_id, kind), count in collections.Counter(
            (e.rule_id, e.event) for e in stored
        ).items():
            self.events.labels(rule=rule_label(rule_id), event=kind.value).inc(count)
        if duplicates:
            self.duplicates.inc(duplicates)

    def record_skipped(self, foreign: int, invalid: int) -> None:
        if foreign:
            self.skipped.labels(why="foreign").inc(foreign)
        if invalid:
            self.skipped.labels(why="invalid").inc(invalid)

    def record_settled(self, sends: Iterable[SendRecord]) -> None:
        for rule_id, count in collections.Counter(send.rule_id for send in sends).items():
            self.settled.labels(rule=rule_id).inc(count)

    def record_in_doubt(self, counts: Mapping[EvidenceState, int]) -> None:
        for state, count in counts.items():
            self.in_doubt.labels(evidence=state.value).set(count)

    def record_resent(self, sends: Iterable[SendRecord]) -> None:
        for send in sends:
            self.resent.labels(rule=send.rule_id).inc()


__all__ = ["ACCEPTED", "LEDGER_ERROR", "DeliveryEventType", "WebhookMetrics", "rule_label"]
