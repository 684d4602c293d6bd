"""``preview`` and ``send-test``: what one rule would send to SendGrid for one event.

The decision is the engine's own (:func:`trigmail.engine.decide` on an empty ledger), and the
request is the provider's own body (:func:`trigmail.providers.bodies.build_body`), so what is
shown is exactly what would go out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from trigmail.decisions import Reason, Schedule, SetAside, Skip
from trigmail.engine import decide
from trigmail.errors import BadEventError, TrigmailError
from trigmail.events import event_from_object, format_ts
from trigmail.ledger.memory import MemoryLedger
from trigmail.providers.base import Email
from trigmail.providers.bodies import build_body
from trigmail.rules.model import Address, RuleSet

# A test send's key is never a ledger key: a webhook for it must not settle a real send.
TEST_KEY_PREFIX = "send-test:"


class PreviewError(TrigmailError):
    """Raised when a preview cannot be made: an unknown rule or a bad event."""


@dataclass(frozen=True)
class StepPreview:
    """One step of the rule for the event: the request it would send, or why not."""

    rule: str
    step: int
    key: str | None
    outcome: str
    reason: str
    detail: str
    due_at: datetime | None
    email: Email | None
    request: Mapping[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "step": self.step,
            "key": self.key,
            "outcome": self.outcome,
            "reason": self.reason,
            "detail": self.detail,
            "due_at": None if self.due_at is None else format_ts(self.due_at),
            "request": None if self.request is None else dict(self.request),
        }


def preview(
    rule_id: str,
    obj: object,
    rules: RuleSet,
    default_from: Address,
    *,
    to: str | None = None,
    now: datetime | None = None,
) -> list[StepPreview]:
    """Decide ``obj`` (an event object) with ``rules`` and return ``rule_id``'s sends.

    Args:
        to: send to this address instead of the event's (``send-test``); the key then
            carries :data:`TEST_KEY_PREFIX`.
        now: the decision time; default the event's own time, so ``max_late`` never skips.

    Raises:
        PreviewError: the rule does not exist, or the event is not valid.
    """
    if rules.get(rule_id) is None:
        known = ", ".join(sorted(rule.id for rule in rules.rules)) or "none"
        raise PreviewError(f"no rule {rule_id!r} (rules: {known})")
    if to is not None and isinstance(obj, Mapping):
        obj = {**obj, "email": to}
    try:
        event = event_from_object(obj, datetime.now(UTC))
    except BadEventError as exc:
        raise PreviewError(f"the event is not valid: {exc}") from None
    ledger = MemoryLedger()
    with ledger.transaction() as view:
        decisions = decide(event, rules, view, now or event.ts)
    found = []
    for decision in decisions:
        if decision.rule_id != rule_id:
            continue
        if isinstance(decision, Schedule):
            key = decision.key if to is None else TEST_KEY_PREFIX + decision.key
            email = Email(key=key, rule_id=rule_id, to=decision.email, payload=decision.payload)
            request = build_body([email], default_from)
            found.append(
                StepPreview(
                    rule_id,
                    decision.step,
                    key,
                    "scheduled",
                    decision.reason.value,
                    "",
                    decision.due_at,
                    email,
                    request,
                )
            )
        elif isinstance(decision, Skip | SetAside):
            outcome = "skipped" if isinstance(decision, Skip) else "dead_letter"
            found.append(
                StepPreview(
                    rule_id,
                    decision.step or 0,
                    getattr(decision, "key", None),
                    outcome,
                    decision.reason.value,
                    decision.detail,
                    None,
                    None,
                    None,
                )
            )
    if not found:
        found.append(
            StepPreview(
                rule_id,
                0,
                None,
                "skipped",
                Reason.NO_RULE.value,
                f"rule {rule_id} is not triggered by {event.name!r}",
                None,
                None,
                None,
            )
        )
    return found
