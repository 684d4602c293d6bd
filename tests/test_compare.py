"""The pure diff of ``simulate --compare``: which sends were added, removed or moved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from trigmail.compare import diff_sends
from trigmail.decisions import LogEntry, Outcome, Reason

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def sent(rule: str, user: str, event: str, minutes: int, step: int = 0) -> LogEntry:
    return LogEntry(
        at=T0 + timedelta(minutes=minutes),
        event_id=event,
        user_id=user,
        rule=rule,
        step=step,
        key=f"{rule}:{event}",
        outcome=Outcome.SENT,
        reason=Reason.DELIVERED,
    )


def test_added_removed_moved_and_unchanged_per_rule() -> None:
    old = [sent("a", "u1", "e1", 0), sent("a", "u2", "e2", 60), sent("b", "u1", "e1", 5)]
    new = [sent("a", "u1", "e1", 0), sent("a", "u2", "e2", 120), sent("c", "u3", "e3", 1)]
    diffs = diff_sends(old, new)
    assert {
        rule: (len(d.added), len(d.removed), len(d.moved), d.unchanged) for rule, d in diffs.items()
    } == {
        "a": (0, 0, 1, 1),  # one send an hour later, one untouched
        "b": (0, 1, 0, 0),  # the rule no longer sends
        "c": (1, 0, 0, 0),  # a new rule
    }
    assert diffs["a"].moved == [
        {
            "user_id": "u2",
            "step": 0,
            "event_id": "e2",
            "old_at": "2026-03-02T10:00:00Z",
            "new_at": "2026-03-02T11:00:00Z",
        }
    ]


def test_other_outcomes_and_changed_keys_do_not_count() -> None:
    skipped = LogEntry(T0, "e1", "u1", "a", 0, None, Outcome.SKIPPED, Reason.COOLDOWN)
    renamed = sent("a", "u1", "e1", 0)
    # the same send under a new dedupe key is the same send
    rekeyed = LogEntry(renamed.at, "e1", "u1", "a", 0, "a:u1", Outcome.SENT, Reason.DELIVERED)
    diffs = diff_sends([renamed, skipped], [rekeyed])
    assert (diffs["a"].changed, diffs["a"].unchanged) == (False, 1)
