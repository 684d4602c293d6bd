"""What a run must produce, computed by hand from the lines fed and the rules below.

The oracle does not use trigmail's engine: the rule set is kept small enough that its
outcomes can be stated directly, so a bug in the engine cannot hide behind the same bug here.

- ``notify`` (on ``ping``, immediate, ``on_doubt: skip``, key ``notify:<event id>``): one
  email per distinct ping; a ping without an id has its own user, so one email to that user.
- ``receipt`` (on ``order``, immediate, ``on_doubt: resend``, key ``receipt:<order id>``):
  one email per order id, however many events carry it.
- ``nudge`` (on ``browse``, after :data:`NUDGE_DELAY_S`, cancelled by ``cancel``, cooldown of
  an hour): a cancelled browse never sends; of a user's two later browses exactly one does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tests.reliability.workload import Kind, Workload

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
    # Per nudge user, the keys of its two live browses: exactly one goes out.
    nudges: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # Keys of cancelled browses: scheduled, then cancelled, never accepted.
    cancelled: set[str] = field(default_factory=set)
    # How often each (raw line, reason) must be in the dead-letter place.
    dead: Counter[tuple[str, str]] = field(default_factory=Counter)
    # How many times each event (by identity) was fed.
    copies: Counter[str] = field(default_factory=Counter)

    def allowed_keys(self) -> set[str]:
        """Every key the ledger may hold for id'd events (id-less notify keys are by user)."""
        live = {key for keys in self.nudges.values() for key in keys}
        return self.keys | live | self.cancelled


def expect(workload: Workload) -> Expected:
    expected = Expected()
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
            assert line.key is not None and line.user_id is not None
            if line.cancelled:
                expected.cancelled.add(line.key)
            else:
                expected.nudges[line.user_id].add(line.key)
        elif line.key is not None:
            expected.keys.add(line.key)
    return expected
