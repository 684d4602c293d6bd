"""The checks of a several-worker run, where they differ from one worker's.

With several workers, events of one user can be decided by different workers in any order,
even without a crash: a browse and its cancel may be split between two workers' reads, and a
worker that is killed holds its unacknowledged entries until it comes back while the others go
on. That changes nothing about what is promised: every nudge is judged in feed order, the order
the entries were added to the stream with their times (``checks.nudge_not_in_feed_order``),
for every user. There is no exemption for the users the ledger decided out of feed order: the
order the daemons happened to decide in is theirs, and it is what event order (docs/design.md
§3) must make irrelevant.

Only resends are judged differently: by time rather than by instance numbers, since instances
of different workers overlap: an earlier acceptance of a ``resend`` key is explained when the
fake never answered it (or answered after the worker gave up waiting), or when the worker
instance that sent it was killed before the later one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise

from tests.reliability import checks
from tests.reliability.checks import Acceptance, Observed, Violation
from tests.reliability.oracle import RESEND_RULES, Expected, rule_of

# Every check of one worker but the resend check, replaced by the time-based one below.
SHARED: tuple[checks.Check, ...] = tuple(
    each for each in checks.CHECKS if each is not checks.resend_duplicate_unexplained
)


@dataclass
class Timed:
    """What the time-based resend check needs beyond :class:`Observed`."""

    # When the fake received each acceptance (parallel to ``Observed.acceptances``).
    accepted_at: list[float] = field(default_factory=list)
    # When each killed instance ended (epoch seconds), by instance number.
    killed_at: dict[int, float] = field(default_factory=dict)


def resend_duplicate_unexplained(observed: Observed, timed: Timed) -> list[Violation]:
    """Under resend, each acceptance but the last was never answered (or answered after its
    sender gave up waiting), or its sender was killed before the next acceptance (its restart
    found the send ``sending`` and scheduled it again)."""
    by_key: dict[str, list[tuple[float, Acceptance]]] = defaultdict(list)
    for at, acceptance in zip(timed.accepted_at, observed.acceptances, strict=True):
        if rule_of(acceptance.key) in RESEND_RULES:
            by_key[acceptance.key].append((at, acceptance))
    found = []
    for key, timeline in sorted(by_key.items()):
        timeline.sort(key=lambda pair: pair[0])
        for (_, earlier), (later_at, _) in pairwise(timeline):
            killed_at = timed.killed_at.get(earlier.instance, float("inf"))
            if not earlier.unanswered and killed_at > later_at:
                detail = f"accepted {len(timeline)} times; one by instance {earlier.instance}"
                found.append(
                    Violation("resend_duplicate_unexplained", key, detail + " unexplained")
                )
                break
    return found


def check(expected: Expected, observed: Observed, timed: Timed) -> list[Violation]:
    """Every check of a several-worker run."""
    found = [violation for each in SHARED for violation in each(expected, observed)]
    return found + resend_duplicate_unexplained(observed, timed)
