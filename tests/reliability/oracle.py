"""What a run must produce, computed by hand from the lines fed and the rules below.

The oracle does not use trigmail's engine: the rule set is kept small enough that its
outcomes can be stated directly, so a bug in the engine cannot hide behind the same bug here.

- ``notify`` (on ``ping``, immediate, ``on_doubt: skip``, key ``notify:<event id>``): one
  email per distinct ping; a ping without an id has its own user, so one email to that user.
- ``receipt`` (on ``order``, immediate, ``on_doubt: resend``, key ``receipt:<order id>``):
  one email per order id, however many events carry it.
- ``nudge`` (on ``browse``, after :data:`NUDGE_DELAY_S`, cancelled by ``cancel``, cooldown of
  an hour), judged in feed order, as ``trigmail simulate`` would decide the lines as written:
  a browse whose nudge fell due after a cancel of its user entered the source is cancelled
  (``cancel_on``), never accepted; of the rest, the first in feed order goes out and the
  cooldown holds every later one. Never the order the ledger happened to decide them in: that
  is the daemon's, and judging by it would excuse the bug it hides (:func:`plan_nudges`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product

from tests.reliability.workload import Fed, Kind, Workload

# Far longer than a restart of the daemon, so that a cancel written with its browse always
# arrives before the nudge falls due, whatever kill lands between them.
NUDGE_DELAY_S = 8

RULES_YAML = f"""\
rules:
  - id: notify
    on: ping
    on_doubt: skip
    send:
      template: d-notify
      data: {{note: "{{{{ properties.note }}}}"}}
  - id: receipt
    on: order
    on_doubt: resend
    dedupe: "{{rule}}:{{properties.order_id}}"
    send:
      template: d-receipt
      data: {{order_id: "{{{{ properties.order_id }}}}"}}
  - id: nudge
    on: browse
    delay: {NUDGE_DELAY_S}s
    cancel_on: [cancel]
    cooldown: 1h
    send:
      template: d-nudge
"""

# A cancel written less than this before its nudge's due time may be judged either way: the
# stamp is taken just before the write, and a Redis entry's id (the stream's own clock, which
# the daemon orders by) a little after it.
DUE_MARGIN_S = 0.5

# How a nudge ended, as the checks see it.
OUT = "out"  # sent or in doubt: it reached (or may have reached) the provider
CANCELLED = "cancelled"  # cancelled by its user's cancel (reason cancel_on), never accepted
HELD = "held"  # anything else: skipped or dropped by the cooldown, or never scheduled

SKIP_RULES = frozenset({"notify", "nudge"})
RESEND_RULES = frozenset({"receipt"})


def rule_of(key: str) -> str:
    return key.split(":", 1)[0]


@dataclass
class Expected:
    """The outcomes the rules promise for one workload."""

    # Keys that must each end sent (accepted once; more only under resend, explained) or in doubt.
    keys: set[str] = field(default_factory=set)
    # Users of pings without an id: exactly one notify each, whatever its (hashed) key.
    idless_users: set[str] = field(default_factory=set)
    # Per nudge user, the keys of its browses, and what their feed order allows.
    nudges: dict[str, NudgePlan] = field(default_factory=dict)
    # How often each (raw line, reason) must be in the dead-letter place.
    dead: Counter[tuple[str, str]] = field(default_factory=Counter)
    # How many times each event (by identity) was fed.
    copies: Counter[str] = field(default_factory=Counter)

    def allowed_keys(self) -> set[str]:
        """Every key the ledger may hold for id'd events (id-less notify keys are by user)."""
        return self.keys | {key for plan in self.nudges.values() for key in plan.keys}


@dataclass(frozen=True)
class _Browse:
    key: str
    due_s: float
    cancel: str  # "must", "may" or "no": whether a cancel after it came before its due time


@dataclass(frozen=True)
class NudgePlan:
    """One nudge user's browses, in feed order, and what their feed order allows of them."""

    user: str
    browses: tuple[_Browse, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(browse.key for browse in self.browses)

    @property
    def must_cancel(self) -> frozenset[str]:
        """Keys that must end cancelled: their cancel entered before they were due."""
        return frozenset(b.key for b in self.browses if b.cancel == "must")

    def ways(
        self, refused: frozenset[str] = frozenset(), unscheduled: frozenset[str] = frozenset()
    ) -> list[dict[str, frozenset[str]]]:
        """Each acceptable ending, as key -> allowed outcomes.

        Each browse is cancelled or not (either, when its cancel came after it fell due: a late
        daemon may still have held it then, and cancels it, or sent it before). Of those not
        cancelled, the first due goes out and the hour's cooldown holds the others, unless the
        provider ``refused`` it: then it waited out its retry, and the next may go out first
        (the cooldown then drops it), as it may on a live system with a provider's hiccup. A
        browse decided while a refused one was in flight was never ``unscheduled`` (the
        cooldown counts a send in flight): the one after it may go out instead.
        """
        ways = []
        for cancelled in product(*(_CHOICES[b.cancel] for b in self.browses)):
            live = [b for b, gone in zip(self.browses, cancelled, strict=True) if not gone]
            for out in _turns(live, refused, unscheduled):
                ways.append(self._way(dict(zip(self.keys, cancelled, strict=True)), out))
        return ways

    def _way(self, cancelled: dict[str, bool], out: str) -> dict[str, frozenset[str]]:
        way: dict[str, frozenset[str]] = {}
        out_seen = False
        for browse in self.browses:
            out_seen = out_seen or browse.key == out
            if cancelled[browse.key]:
                # After the one out, the cooldown may skip it before its cancel comes.
                way[browse.key] = frozenset({CANCELLED, HELD} if out_seen else {CANCELLED})
            elif browse.key == out:
                way[browse.key] = frozenset({OUT})
            else:
                way[browse.key] = frozenset({HELD, CANCELLED} if browse.cancel != "no" else {HELD})
        return way


_CHOICES = {"must": (True,), "may": (True, False), "no": (False,)}


def _turns(live: list[_Browse], refused: frozenset[str], unscheduled: frozenset[str]) -> list[str]:
    """Which of the ``live`` browses (due order) may be the one out: the first, or a later one
    when every one before it was refused by the provider once, or never scheduled because one
    refused before it was in flight when it was decided."""
    turns = []
    after_refused = False
    for browse in live:
        turns.append(browse.key)
        if browse.key in refused:
            after_refused = True
        elif not (after_refused and browse.key in unscheduled):
            break
    return turns or [""]


def _browses(fed: Sequence[Fed]) -> list[_Browse]:
    """One user's browses in feed order, each with how the cancels after it stand to it."""
    browses: list[tuple[str, float]] = []
    cancels: dict[str, str] = {}
    for each in fed:
        line = each.line
        if line.kind is Kind.BROWSE and line.key is not None:
            browses.append((line.key, each.at + NUDGE_DELAY_S))
        elif line.kind is Kind.CANCEL:
            for key, due_s in browses:
                if each.at < due_s - DUE_MARGIN_S:
                    cancels[key] = "must"
                else:
                    cancels.setdefault(key, "may")
    return [_Browse(key, due_s, cancels.get(key, "no")) for key, due_s in browses]


def plan_nudges(user: str, fed: Sequence[Fed]) -> NudgePlan:
    """What ``user``'s browse and cancel lines, in feed order with their times, allow."""
    return NudgePlan(user, tuple(_browses(fed)))


def expect(workload: Workload, fed: Sequence[Fed]) -> Expected:
    """What ``workload`` must produce, its lines written as ``fed`` records."""
    expected = Expected()
    by_user: dict[str, list[Fed]] = defaultdict(list)
    for each in fed:
        if each.line.kind in (Kind.BROWSE, Kind.CANCEL) and each.line.user_id is not None:
            by_user[each.line.user_id].append(each)
    for user, lines in by_user.items():
        expected.nudges[user] = plan_nudges(user, lines)
    for line in workload.lines:
        if line.kind is Kind.MALFORMED:
            assert line.reason is not None
            expected.dead[(line.text, line.reason)] += 1
            continue
        assert line.identity is not None
        expected.copies[line.identity] += 1
        if line.kind is Kind.PING_NO_ID:
            assert line.user_id is not None
            expected.idless_users.add(line.user_id)
        elif line.kind is Kind.BROWSE:
            continue  # judged in feed order above
        elif line.key is not None:
            expected.keys.add(line.key)
    return expected
