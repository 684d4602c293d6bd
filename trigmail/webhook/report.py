"""What ``status`` and ``ledger in-doubt`` say of delivery evidence: pure reads of the ledger.

Each in-doubt send has an evidence state, a stable word (docs/webhook.md):

- ``awaiting_evidence``: ``on_doubt: skip``; a webhook event for it will settle it as sent;
  without one it stays in doubt until an operator resolves it.
- ``awaiting_verify``: ``on_doubt: verify``; settled by evidence, or sent again once at
  ``resend_at``.
- ``resent_no_evidence``: ``on_doubt: verify``, already sent again once, in doubt again: it is
  never sent a third time; evidence or an operator settles it.
- ``evidence_received``: an event came and the next sweep settles it (seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from trigmail.events import format_ts
from trigmail.evidence import EvidenceState
from trigmail.ledger.base import Ledger, SendRecord
from trigmail.rules.model import OnDoubt


def evidence_of(
    ledger: Ledger, sends: Sequence[SendRecord], verify_after_s: int
) -> dict[str, dict[str, Any]]:
    """Return each in-doubt send's evidence state (and, under verify, when it is sent again)."""
    resent = ledger.doubt_resent([send.key for send in sends])
    found: dict[str, dict[str, Any]] = {}
    for send in sends:
        resend_at = None
        if ledger.delivery_events(send.key):
            state = EvidenceState.EVIDENCE_RECEIVED
        elif send.on_doubt != OnDoubt.VERIFY:
            state = EvidenceState.AWAITING_EVIDENCE
        elif send.key in resent:
            state = EvidenceState.RESENT_NO_EVIDENCE
        else:
            state = EvidenceState.AWAITING_VERIFY
            since = send.updated_at or send.due_at
            resend_at = format_ts(since + timedelta(seconds=verify_after_s))
        found[send.key] = {"evidence": state.value, "resend_at": resend_at}
    return found


def delivery_by_rule(ledger: Ledger) -> dict[str, dict[str, int]]:
    """Webhook events per rule and type (delivered, bounce, open, click, …), rules sorted."""
    counts = ledger.delivery_counts()
    return {rule: dict(sorted(counts[rule].items())) for rule in sorted(counts)}
