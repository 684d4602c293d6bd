"""The checks that change with several workers: those that depend on the order of events.

With one worker, events are decided in the order they were fed. With several, events of one
user can be decided by different workers in any order, even without a crash: a cancel and its
browse travel in one write, but the write may be split between two workers' reads, and a
worker that is killed holds its unacknowledged entries until it comes back while the others go
on. The per-user advisory lock serialises two decisions for one user; it does not order them.

So the checks about a nudge are split in two:

- **Order-free, always judged.** Of a user's nudges at most one goes out (sent or in doubt) and
  at most one is accepted: the cooldown is an hour, far longer than a run, so it must hold in
  any order. A cancelled send is never accepted.
- **Order-dependent, judged against the order the ledger decided.** The decision log's ids are
  allocated inside the transaction, after the user's lock is taken, so for one user they order
  the decisions as the lock did. When the ledger decided the browse, then its cancel (within the
  nudge's delay), then the two later browses, as they were fed, the single-worker promises are
  judged: the first nudge cancelled, exactly one of the later two out. Otherwise the user is
  reported as "order-dependent, not judged", with the reason, and only the order-free checks
  apply to it.

Resends are explained by time rather than by instance numbers, since instances of different
workers overlap: an earlier acceptance of a ``resend`` key is explained when the fake never
answered it, or when the worker instance that sent it was killed before the later one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

from tests.reliability import checks
from tests.reliability.checks import ACCEPTED_UNANSWERED, Acceptance, Observed, Violation
from tests.reliability.oracle import NUDGE_DELAY_S, RESEND_RULES, Expected, rule_of
from tests.reliability.workload import Kind, Workload

# The checks that hold whatever order the events were decided in (see the module docstring).
ORDER_FREE: tuple[checks.Check, ...] = (
    checks.skip_key_accepted_twice,
    checks.expected_send_missing,
    checks.in_doubt_not_reported,
    checks.unexpected_send,
    checks.idless_event_not_once,
    checks.dead_letter_mismatch,
    checks.event_lost,
    checks.event_processed_twice,
)


@dataclass(frozen=True)
class Decided:
    """The first decision of an event: its decision log id (the ledger's order) and time."""

    log_id: int
    at: datetime


@dataclass(frozen=True)
class NudgeUser:
    """One nudge user of the workload: the browse its cancel travels with, the cancel, and the
    two later browses (event ids)."""

    user: str
    first: str
    cancel: str
    later: tuple[str, ...]

    def keys(self) -> list[str]:
        return [f"nudge:{event_id}" for event_id in (self.first, *self.later)]


@dataclass
class Timed:
    """What the order-aware checks need beyond :class:`Observed`."""

    # When the fake received each acceptance (parallel to ``Observed.acceptances``).
    accepted_at: list[float] = field(default_factory=list)
    # When each killed instance ended (epoch seconds), by instance number.
    killed_at: dict[int, float] = field(default_factory=dict)
    # The first decision of each event id.
    decided: dict[str, Decided] = field(default_factory=dict)
    # Users whose events the ledger decided out of feed order, with the reason.
    not_judged: dict[str, str] = field(default_factory=dict)


def nudge_users(workload: Workload) -> list[NudgeUser]:
    """Each nudge user of ``workload``, read from its lines."""
    first: dict[str, str] = {}
    cancel: dict[str, str] = {}
    later: dict[str, list[str]] = defaultdict(list)
    for line in workload.lines:
        if line.user_id is None or line.identity is None:
            continue
        if line.kind is Kind.BROWSE and line.cancelled:
            first[line.user_id] = line.identity
        elif line.kind is Kind.BROWSE:
            later[line.user_id].append(line.identity)
        elif line.kind is Kind.CANCEL:
            cancel[line.user_id] = line.identity
    return [NudgeUser(u, first[u], cancel[u], tuple(later[u])) for u in sorted(first)]


def resend_duplicate_unexplained(observed: Observed, timed: Timed) -> list[Violation]:
    """Under resend, each acceptance but the last was never answered, or its sender was killed
    before the next acceptance (its restart found the send ``sending`` and scheduled it again)."""
    by_key: dict[str, list[tuple[float, Acceptance]]] = defaultdict(list)
    for at, acceptance in zip(timed.accepted_at, observed.acceptances, strict=True):
        if rule_of(acceptance.key) in RESEND_RULES:
            by_key[acceptance.key].append((at, acceptance))
    found = []
    for key, timeline in sorted(by_key.items()):
        timeline.sort(key=lambda pair: pair[0])
        for (_, earlier), (later_at, _) in pairwise(timeline):
            killed_at = timed.killed_at.get(earlier.instance, float("inf"))
            if earlier.fault not in ACCEPTED_UNANSWERED and killed_at > later_at:
                detail = f"accepted {len(timeline)} times; one by instance {earlier.instance}"
                found.append(
                    Violation("resend_duplicate_unexplained", key, detail + " unexplained")
                )
                break
    return found


def nudge_order_free(user: NudgeUser, observed: Observed) -> list[Violation]:
    """At most one nudge out and accepted per user; a cancelled one never accepted."""
    accepted = observed.accepted()
    keys = user.keys()
    out = sorted(key for key in keys if observed.went_out(key))
    taken = sum(accepted[key] for key in keys)
    found = []
    if len(out) > 1 or taken > 1:
        detail = f"{len(out)} went out {out}, {taken} accepted"
        found.append(Violation("cooldown_broken", user.user, detail))
    for key in keys:
        if observed.states.get(key) == "cancelled" and accepted[key]:
            found.append(Violation("cancelled_trigger_sent", key, f"accepted {accepted[key]}"))
    return found


def order_kept(user: NudgeUser, decided: dict[str, Decided]) -> str | None:
    """``None`` when the ledger decided ``user``'s events as fed; else why not."""
    events = (user.first, user.cancel, *user.later)
    missing = [event_id for event_id in events if event_id not in decided]
    if missing:
        return f"never decided: {missing} (see event_lost)"
    first, cancel = decided[user.first], decided[user.cancel]
    if cancel.log_id < first.log_id:
        return "the cancel was decided before the browse it cancels"
    if cancel.at - first.at >= timedelta(seconds=NUDGE_DELAY_S):
        return "the cancel was decided after the first nudge fell due"
    if any(decided[later].log_id < cancel.log_id for later in user.later):
        return "a later browse was decided before the cancel"
    return None


def nudge_in_order(user: NudgeUser, observed: Observed) -> list[Violation]:
    """The single-worker promises, for a user whose events were decided as fed."""
    accepted = observed.accepted()
    first = f"nudge:{user.first}"
    found = []
    if observed.states.get(first) != "cancelled" or accepted[first]:
        found.append(
            Violation("cancelled_trigger_sent", first, f"state {observed.states.get(first)}")
        )
    later = [f"nudge:{event_id}" for event_id in user.later]
    out = [key for key in later if observed.went_out(key)]
    if len(out) != 1:
        states = {key: observed.states.get(key) for key in later}
        found.append(Violation("cooldown_broken", user.user, f"{len(out)} went out {states}"))
    return found


def check(
    expected: Expected, observed: Observed, timed: Timed, users: list[NudgeUser]
) -> list[Violation]:
    """Every check of a several-worker run; fills ``timed.not_judged``."""
    found = [violation for each in ORDER_FREE for violation in each(expected, observed)]
    found += resend_duplicate_unexplained(observed, timed)
    for user in users:
        found += nudge_order_free(user, observed)
        reason = order_kept(user, timed.decided)
        if reason is None:
            found += nudge_in_order(user, observed)
        else:
            timed.not_judged[user.user] = reason
    return found


def not_judged_reasons(timed: Timed) -> dict[str, int]:
    return dict(Counter(timed.not_judged.values()))
