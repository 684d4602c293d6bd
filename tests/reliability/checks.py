"""Each promise of docs/design.md §3 as a named check of what a run observed against the oracle.

A check returns the violations it found; a run is green when all of them return none.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from tests.fake_sendgrid import FaultKind
from tests.reliability.oracle import (
    CANCELLED,
    HELD,
    OUT,
    RESEND_RULES,
    SKIP_RULES,
    Expected,
    NudgePlan,
    rule_of,
)

# Faults after which the fake had accepted a request but the daemon never heard so.
ACCEPTED_UNANSWERED = frozenset({FaultKind.HANG_AFTER_ACCEPT, FaultKind.RESET_AFTER_ACCEPT})


@dataclass(frozen=True)
class Violation:
    """One broken promise: which check, about what (a key, a user, an event), and how."""

    check: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.subject}: {self.detail}"


@dataclass(frozen=True)
class Acceptance:
    """One personalization the fake accepted: its key, the daemon instance that sent it
    (numbered by start), the fault that kept the answer from it, if any, and whether the
    daemon had already given up waiting for the answer (``late``: it closed the connection at
    its read timeout, the fake slowed by load)."""

    key: str
    instance: int
    fault: FaultKind | None
    late: bool = False

    @property
    def unanswered(self) -> bool:
        """The daemon never read the answer: it cannot know the email went."""
        return self.late or self.fault in ACCEPTED_UNANSWERED


@dataclass
class Observed:
    """What a run left behind: the fake's record, the ledger, ``status``, the dead letters."""

    acceptances: list[Acceptance] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)  # ledger key -> state
    users: dict[str, str] = field(default_factory=dict)  # ledger key -> user id
    in_doubt: set[str] = field(default_factory=set)  # from `status --format json`
    killed: set[int] = field(default_factory=set)  # instances that were SIGKILLed
    dead: Counter[tuple[str, str]] = field(default_factory=Counter)  # (raw, reason)
    decided: set[str] = field(default_factory=set)  # event identities with a decision
    duplicates: Counter[str] = field(default_factory=Counter)  # identity -> duplicate_event
    cancel_on: set[str] = field(default_factory=set)  # keys the decision log cancelled so
    refused: set[str] = field(default_factory=set)  # keys of requests the fake refused

    def note_refused(self, body: Any) -> None:
        """Remember the keys of a request the fake did not accept (a fault refused it)."""
        for personalization in body.get("personalizations", []) if isinstance(body, dict) else []:
            key = personalization.get("custom_args", {}).get("trigmail_key")
            if isinstance(key, str):
                self.refused.add(key)

    # Whether the source can deliver an entry again after a kill (Redis) or never (spool).
    replays: bool = False

    def accepted(self) -> Counter[str]:
        return Counter(a.key for a in self.acceptances)

    def went_out(self, key: str) -> bool:
        """Sent or in doubt: the email reached (or may have reached) the provider."""
        return self.states.get(key) in ("sent", "in_doubt")

    def nudge_outcome(self, key: str, accepted: Counter[str]) -> str:
        """``out``, ``cancelled`` (by its user's cancel, and never accepted) or ``held``."""
        if self.went_out(key) or accepted[key]:
            return OUT
        if self.states.get(key) == "cancelled" and key in self.cancel_on:
            return CANCELLED
        return HELD


Check = Callable[[Expected, Observed], list[Violation]]


def skip_key_accepted_twice(expected: Expected, observed: Observed) -> list[Violation]:
    return [
        Violation("skip_key_accepted_twice", key, f"accepted {n} times")
        for key, n in observed.accepted().items()
        if rule_of(key) in SKIP_RULES and n > 1
    ]


def expected_send_missing(expected: Expected, observed: Observed) -> list[Violation]:
    """Every expected key ends sent (and the provider has it) or is reported in doubt."""
    accepted = observed.accepted()
    found = []
    for key in sorted(expected.keys):
        state = observed.states.get(key)
        if state == "in_doubt" and key in observed.in_doubt:
            continue
        if state == "sent" and accepted[key] >= 1:
            continue
        found.append(
            Violation("expected_send_missing", key, f"state {state}, accepted {accepted[key]}")
        )
    return found


def in_doubt_not_reported(expected: Expected, observed: Observed) -> list[Violation]:
    return [
        Violation("in_doubt_not_reported", key, "in doubt in the ledger, not in status")
        for key, state in observed.states.items()
        if state == "in_doubt" and key not in observed.in_doubt
    ]


def resend_duplicate_unexplained(expected: Expected, observed: Observed) -> list[Violation]:
    """Under resend, each acceptance but the last must have been in doubt: its answer lost to
    a fault or never read (late), or its daemon killed with a later daemon sending again."""
    by_key: dict[str, list[Acceptance]] = defaultdict(list)
    for acceptance in observed.acceptances:
        by_key[acceptance.key].append(acceptance)
    found = []
    for key, acceptances in sorted(by_key.items()):
        if rule_of(key) not in RESEND_RULES:
            continue
        for earlier, later in pairwise(acceptances):
            crashed = earlier.instance in observed.killed and later.instance > earlier.instance
            if not earlier.unanswered and not crashed:
                detail = f"accepted {len(acceptances)} times; one by instance {earlier.instance}"
                found.append(
                    Violation("resend_duplicate_unexplained", key, detail + " unexplained")
                )
                break
    return found


def unexpected_send(expected: Expected, observed: Observed) -> list[Violation]:
    """Nothing is scheduled or sent that the oracle does not expect (a deduplicated trigger)."""
    allowed = expected.allowed_keys()
    found = []
    for key in sorted(set(observed.states) | set(observed.accepted())):
        if key in allowed:
            continue
        if rule_of(key) == "notify" and observed.users.get(key) in expected.idless_users:
            continue
        found.append(Violation("unexpected_send", key, f"state {observed.states.get(key)}"))
    return found


def idless_event_not_once(expected: Expected, observed: Observed) -> list[Violation]:
    """A ping without an id (redelivered or not) makes exactly one notify for its user."""
    keys_by_user: dict[str, list[str]] = defaultdict(list)
    for key, user in observed.users.items():
        if rule_of(key) == "notify" and user in expected.idless_users:
            keys_by_user[user].append(key)
    accepted = observed.accepted()
    found = []
    for user in sorted(expected.idless_users):
        keys = keys_by_user.get(user, [])
        ok = len(keys) == 1 and (
            (observed.states[keys[0]] == "sent" and accepted[keys[0]] == 1)
            or keys[0] in observed.in_doubt
        )
        if not ok:
            states = [(k, observed.states[k], accepted[k]) for k in keys]
            found.append(Violation("idless_event_not_once", user, f"sends {states}"))
    return found


def _nudge_user(plan: NudgePlan, observed: Observed, accepted: Counter[str]) -> list[Violation]:
    ended = {key: observed.nudge_outcome(key, accepted) for key in plan.keys}
    unscheduled = frozenset(key for key in plan.keys if observed.states.get(key) is None)
    ways = plan.ways(frozenset(observed.refused), unscheduled)
    if any(all(ended[key] in way[key] for key in plan.keys) for way in ways):
        return []
    found = [
        Violation("cancelled_trigger_sent", key, f"ended {ended[key]}, accepted {accepted[key]}")
        for key in sorted(plan.must_cancel)
        if ended[key] != CANCELLED
    ]
    if not found:
        allowed = [{key: sorted(way[key]) for key in plan.keys} for way in ways]
        states = [observed.states.get(key) for key in plan.keys]
        detail = f"ended {ended}, states {states}, accepted {[accepted[k] for k in plan.keys]};"
        detail += " feed order allows"
        found.append(Violation("cooldown_broken", plan.user, f"{detail} {allowed}"))
    return found


def nudge_not_in_feed_order(expected: Expected, observed: Observed) -> list[Violation]:
    """Each user's nudges end as the feed order allows (:func:`oracle.plan_nudges`): a browse
    whose cancel entered the source before it fell due ends ``cancelled`` with reason
    ``cancel_on`` and is never accepted (``cancelled_trigger_sent``); of the rest, the first in
    feed order goes out and the cooldown holds the others (``cooldown_broken``)."""
    accepted = observed.accepted()
    found = []
    for _, plan in sorted(expected.nudges.items()):
        found += _nudge_user(plan, observed, accepted)
    return found


def dead_letter_mismatch(expected: Expected, observed: Observed) -> list[Violation]:
    found = []
    for (raw, reason), n in sorted((expected.dead - observed.dead).items()):
        found.append(Violation("dead_letter_missing", raw, f"reason {reason}, {n} missing"))
    for (raw, reason), n in sorted((observed.dead - expected.dead).items()):
        found.append(Violation("dead_letter_extra", raw, f"reason {reason}, {n} extra"))
    return found


def event_lost(expected: Expected, observed: Observed) -> list[Violation]:
    return [
        Violation("event_lost", identity, "fed, never decided")
        for identity in sorted(expected.copies)
        if identity not in observed.decided
    ]


def event_processed_twice(expected: Expected, observed: Observed) -> list[Violation]:
    """Each copy beyond the first is a recognised duplicate; a spool never re-reads a line, so
    there exactly as many; a stream may deliver an entry again after a kill, never fewer."""
    found = []
    for identity, copies in sorted(expected.copies.items()):
        seen = observed.duplicates[identity]
        if seen < copies - 1 or (seen > copies - 1 and not observed.replays):
            detail = f"fed {copies} times, {seen} recognised as duplicates"
            found.append(Violation("event_processed_twice", identity, detail))
    return found


CHECKS: tuple[Check, ...] = (
    skip_key_accepted_twice,
    expected_send_missing,
    in_doubt_not_reported,
    resend_duplicate_unexplained,
    unexpected_send,
    idless_event_not_once,
    nudge_not_in_feed_order,
    dead_letter_mismatch,
    event_lost,
    event_processed_twice,
)


def check(expected: Expected, observed: Observed) -> list[Violation]:
    return [violation for each in CHECKS for violation in each(expected, observed)]
