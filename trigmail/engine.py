"""The functional core: what to do with an event, and with a send that falls due.

Both decisions are pure: they read the rule set, a view of the ledger and ``now``, and return
values that carry their reason. The daemon and ``simulate`` apply them; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, tzinfo
from typing import Any, Final, Protocol

from trigmail.assign import choose_variant, in_holdout
from trigmail.decisions import (
    Cancel,
    Decision,
    Defer,
    Drop,
    DueDecision,
    Fire,
    Payload,
    Reason,
    Schedule,
    SetAside,
    Skip,
)
from trigmail.errors import TemplateRenderError
from trigmail.events import MISSING, Event
from trigmail.ledger.base import CancelMark, SendRecord
from trigmail.pauses import Pauses
from trigmail.rules.model import CancelOn, Outside, Rule, RuleSet, SendSpec, SendWindow, Step
from trigmail.rules.templating import default_data
from trigmail.windows import describe, next_opening, resolve_zone


class LedgerView(Protocol):
    """The reads the engine decides from; a ledger transaction provides them."""

    def seen_event(self, event_id: str) -> bool: ...

    def send_exists(self, key: str) -> bool: ...

    def last_delivered_at(self, rule_id: str, user_id: str) -> datetime | None: ...

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]: ...

    def delivered_count_since(
        self, user_id: str, categories: Collection[str], since: datetime
    ) -> int: ...

    def cancel_marks_after(self, user_id: str, order: str) -> list[CancelMark]: ...


# Where a send's trigger entered a source read by several workers, kept among its trigger
# values (not an event path: those never start with "@").
ORDER_KEY = "@order"


def step_key(base_key: str, step: Step) -> str:
    """Return a step's idempotency key: the rule's key, plus ``#n`` for a sequence's step n."""
    return base_key if step.number == 0 else f"{base_key}#{step.number}"


def send_keys(event: Event, rules: RuleSet) -> Iterator[str]:
    """The keys of the sends ``event`` may schedule (some it will not): what a ledger can
    look up for a whole batch before its events are decided."""
    if event.email is None:
        return
    for rule in rules.triggered_by(event.name):
        if not rule.enabled:
            continue
        try:
            base_key = rule.dedupe.render(rule.id, event)
        except TemplateRenderError:
            continue
        for step in rule.steps:
            yield step_key(base_key, step)


def user_reads(event: Event, rules: RuleSet) -> tuple[bool, bool]:
    """Whether deciding ``event`` may read its user's scheduled sends (to cancel some), and
    its user's last deliveries (a cooldown): what a ledger can read for a whole batch's users
    at once (``expect_reads``). Most events need neither. Decided by the event's name alone:
    a batch asks once per name."""
    return bool(rules.cancelled_by(event.name)), rules.cools_down(event.name)


def decide(event: Event, rules: RuleSet, view: LedgerView, now: datetime) -> list[Decision]:
    """Decide what one event does: cancel pending sends, schedule new ones, or nothing.

    Args:
        event: a valid event.
        rules: the rule set in force.
        view: the ledger as of this event (earlier events of the batch included).
        now: the current time (virtual under ``simulate``).
    """
    if view.seen_event(event.id):
        return [duplicate_event(event)]
    return decide_new(event, rules, view, now)


def duplicate_event(event: Event) -> Skip:
    """The decision for an event the ledger has already decided."""
    return Skip(None, Reason.DUPLICATE_EVENT, f"event {event.id} was already decided")


def decide_new(
    event: Event, rules: RuleSet, view: LedgerView, now: datetime, order: str | None = None
) -> list[Decision]:
    """:func:`decide` for an event the caller knows to be new (it has just recorded its id).

    Args:
        order: where the event entered a source whose readers may decide events out of that
            order (see :class:`~trigmail.ledger.base.CancelMark`); ``None`` for one reader.
    """
    cancellers = rules.cancelled_by(event.name)
    decisions: list[Decision] = _cancellations(event, cancellers, view, order) if cancellers else []
    for rule in rules.triggered_by(event.name):
        decided = _decide_rule(rule, event, view, now)
        if order is not None and rule.cancels:
            decided = [_with_order(each, order) for each in decided]
            scheduled = [each for each in decided if isinstance(each, Schedule)]
            if scheduled:
                decided.extend(cancelled_by_marks(rule, scheduled, view, event.user_id, order))
        decisions.extend(decided)
    if not decisions:
        decisions.append(Skip(None, Reason.NO_RULE, f"no rule is triggered by {event.name!r}"))
    return decisions


def _with_order(decision: Decision, order: str) -> Decision:
    """Keep where the trigger entered the source on its send, for cancels decided later."""
    if not isinstance(decision, Schedule):
        return decision
    return replace(decision, cancel_match={**decision.cancel_match, ORDER_KEY: order})


def _cancellations(
    event: Event,
    cancellers: tuple[tuple[Rule, CancelOn], ...],
    view: LedgerView,
    order: str | None,
) -> list[Decision]:
    pending = view.pending_for_user(event.user_id, {rule.id for rule, _ in cancellers})
    if order is not None:
        # A cancel decided late (another worker read it later) leaves alone the triggers that
        # entered the source after it: in the order events happened, they came second.
        pending = [s for s in pending if s.cancel_match.get(ORDER_KEY, "") < order]
    if not pending:
        return []  # the user has no send of those rules waiting: nothing to match
    # One cancel per rule: its own cancel_on and a step's may both name the event.
    sends_by_rule: dict[str, dict[str, SendRecord]] = {}
    for rule, cancel in cancellers:
        value = None if cancel.match is None else event.lookup(cancel.match)
        found = sends_by_rule.setdefault(rule.id, {})
        found.update(
            (send.key, send)
            for send in pending
            if send.rule_id == rule.id
            and cancel.applies_to(send.step)
            and (cancel.match is None or _same(send.cancel_match.get(cancel.match, MISSING), value))
        )
    return [
        _cancel(rule_id, sends.values(), event.id, event.name)
        for rule_id, sends in sends_by_rule.items()
        if sends
    ]


def _cancel(
    rule_id: str, sends: Iterable[SendRecord | Schedule], event_id: str, name: str
) -> Cancel:
    """A cancel of ``sends`` by the event ``name`` ``event_id``, naming each one's step and
    A/B variant for the log."""
    listed = list(sends)
    return Cancel(
        rule_id,
        tuple(s.key for s in listed),
        event_id,
        variants={s.key: s.payload.variant for s in listed if s.payload.variant is not None},
        steps={s.key: s.step for s in listed},
        event=name,
    )


def cancelled_by_marks(
    rule: Rule,
    scheduled: Sequence[Schedule | SendRecord],
    view: LedgerView,
    user_id: str,
    order: str,
) -> Iterator[Cancel]:
    """Cancel what a trigger that entered the source at ``order`` schedules if a ``cancel_on``
    event that entered after it was decided first (another worker read it sooner): in the
    order the events happened, the cancel came second, so the trigger ends cancelled."""
    marks = view.cancel_marks_after(user_id, order)
    for send in scheduled:
        for mark in marks:
            if mark_cancels(rule, send, mark):
                yield _cancel(rule.id, [send], mark.event_id, mark.event)
                break


def mark_cancels(rule: Rule, send: Schedule | SendRecord, mark: CancelMark) -> bool:
    """Whether the ``cancel_on`` event of ``mark`` cancels ``send`` of ``rule``."""
    mine, theirs = send.cancel_match, mark.values
    return any(
        cancel.event == mark.event
        and cancel.applies_to(send.step)
        and ((at := cancel.match) is None or _same(mine.get(at, MISSING), theirs.get(at, MISSING)))
        for cancel in rule.cancels
    )


def _same(trigger_value: Any, cancel_value: Any) -> bool:
    return (
        trigger_value is not MISSING
        and cancel_value is not MISSING
        and trigger_value == (cancel_value)
    )


def _decide_rule(rule: Rule, event: Event, view: LedgerView, now: datetime) -> list[Decision]:
    if not rule.enabled:
        return [Skip(rule.id, Reason.RULE_DISABLED, "the rule is disabled")]
    if rule.when is not None and (failed := rule.when.check(event)) is not None:
        return [Skip(rule.id, Reason.CONDITION_FALSE, failed)]
    if event.email is None:
        return [SetAside(rule.id, Reason.MISSING_EMAIL, "the event has no 'email' to send to")]
    try:
        base_key = rule.dedupe.render(rule.id, event)
    except TemplateRenderError as exc:
        return [SetAside(rule.id, Reason.TEMPLATE_ERROR, f"dedupe: {exc}")]
    # Not even a call for the rules without a holdout (nearly all).
    if rule.holdout and in_holdout(rule.id, event.user_id, rule.holdout):
        share = f"{rule.holdout * 100:g}%"
        detail = f"{event.user_id} is in the rule's {share} holdout (control group)"
        return [Skip(rule.id, Reason.HOLDOUT, detail, key=base_key)]
    # A loop rather than a comprehension, which Python 3.11 builds a function for per call.
    decisions: list[Decision] = []
    for step in rule.steps:
        decisions.append(_decide_step(rule, step, base_key, event, view=view, now=now))
    return decisions


def _decide_step(
    rule: Rule, step: Step, base_key: str, event: Event, *, view: LedgerView, now: datetime
) -> Decision:
    number = step.number
    key = base_key if number == 0 else f"{base_key}#{number}"  # step_key, inlined: per step
    if step.when is not None and (failed := step.when.check(event)) is not None:
        return Skip(rule.id, Reason.CONDITION_FALSE, failed, number, key)
    if view.send_exists(key):
        return Skip(rule.id, Reason.DUPLICATE_KEY, f"key {key} exists", number, key)
    trigger_values = _trigger_values(rule, event) if rule.kept_paths else {}
    if rule.send_window is None:
        # No window (nearly every transactional rule): due when the delay says, no note.
        due_at = event.ts + step.delay if step.delay_s else event.ts
        reason, note = (Reason.DELAY if step.delay_s else Reason.IMMEDIATE), ""
    else:
        due_at, reason, note = _due_at(rule, step, event, trigger_values)
    if reason is Reason.OUTSIDE_WINDOW or rule.max_late_s is not None or rule.cooldown_s > 0:
        held = _held_at_schedule(
            rule, step, key, event.user_id, due=(due_at, reason, note), view=view, now=now
        )
        if held is not None:
            return held
    try:
        payload = _payload(rule.id, step.send, event)
    except TemplateRenderError as exc:
        return SetAside(rule.id, Reason.TEMPLATE_ERROR, str(exc), number)
    assert event.email is not None  # checked by _decide_rule
    # Positional: Schedule's fields in order (rule_id ... detail), cheaper than keywords.
    return Schedule(
        rule.id,
        number,
        key,
        event.user_id,
        event.email,
        event.id,
        due_at,
        payload,
        rule.on_doubt,
        reason,
        trigger_values,
        note,
    )


def _held_at_schedule(
    rule: Rule,
    step: Step,
    key: str,
    user_id: str,
    *,
    due: tuple[datetime, Reason, str],
    view: LedgerView,
    now: datetime,
) -> Skip | None:
    """Why a step is not scheduled although its conditions hold: window, lateness, cooldown."""
    due_at, reason, note = due
    if reason is Reason.OUTSIDE_WINDOW:
        return Skip(rule.id, reason, note, step=step.number, key=key)
    late = _too_late(rule, due_at, now)
    if late is not None:
        return Skip(rule.id, Reason.MAX_LATE, late, step=step.number, key=key)
    until = _cooldown_until(rule, step, user_id, view)
    if until is not None and until > due_at:
        detail = f"last email of this rule to {user_id} holds the next back"
        return Skip(rule.id, Reason.COOLDOWN, detail, step=step.number, key=key, until=until)
    return None


def _trigger_values(rule: Rule, event: Event) -> dict[str, Any]:
    """Keep the trigger's values that the send needs once the event is gone."""
    # One loop, not two comprehensions: once per step of every rule that keeps a value.
    values: dict[str, Any] = {}
    for path in rule.kept_paths:
        value = event.lookup(path)
        if value is not MISSING:
            values[path] = value
    return values


def _due_at(
    rule: Rule, step: Step, event: Event, trigger_values: Mapping[str, Any]
) -> tuple[datetime, Reason, str]:
    """When the step is due, why, and a note for the log (``outside_window``: why not)."""
    due_at = event.ts + step.delay
    reason = Reason.DELAY if step.delay_s else Reason.IMMEDIATE
    window = rule.send_window
    if window is None:
        return due_at, reason, ""
    zone, note = resolve_zone(window, trigger_values)
    opening = next_opening(window, due_at, zone)
    if opening == due_at:
        return due_at, reason, note
    if window.outside is Outside.SKIP:
        return (
            due_at,
            Reason.OUTSIDE_WINDOW,
            _outside(window, f"due at {_local(due_at, zone)}", note),
        )
    return opening, Reason.SEND_WINDOW, note


def _local(at: datetime, zone: tzinfo) -> str:
    return f"{at.astimezone(zone).strftime('%H:%M')} {zone}"


def _outside(window: SendWindow, when: str, note: str) -> str:
    detail = f"{when}, outside send_window {describe(window)} (outside: skip)"
    return f"{detail}; {note}" if note else detail


def _too_late(rule: Rule, due_at: datetime, now: datetime) -> str | None:
    if rule.max_late_s is None:
        return None
    late_s = (now - due_at).total_seconds()
    if late_s <= rule.max_late_s:
        return None
    return f"due {late_s:.0f}s ago, more than max_late {rule.max_late_s}s"


def _cooldown_until(rule: Rule, step: Step, user_id: str, view: LedgerView) -> datetime | None:
    # Later steps of a sequence belong to the trigger that already passed the cooldown.
    if rule.cooldown_s <= 0 or step.number > 1:
        return None
    last = view.last_delivered_at(rule.id, user_id)
    return None if last is None else last + timedelta(seconds=rule.cooldown_s)


def _payload(rule_id: str, spec: SendSpec, event: Event) -> Payload:
    template, data_template, variant = spec.template, spec.data, None
    if spec.variants:
        chosen = choose_variant(rule_id, event.user_id, spec.variants)
        template, variant = chosen.template, chosen.id
        data_template = spec.data if chosen.data is None else chosen.data
    data = default_data(event) if data_template is None else data_template.render(event)
    # Positional: Payload's fields in order, cheaper than keywords once per send.
    return Payload(
        template, data, spec.categories, spec.asm_group, spec.from_, spec.reply_to, variant
    )


def decide_due(send: SendRecord, rules: RuleSet, view: LedgerView, now: datetime) -> DueDecision:
    """Decide what a send that fell due does now: fire, drop (with a reason) or wait.

    Args:
        send: a ``scheduled`` send whose ``due_at`` has passed.
        rules: the rule set in force now, which may differ from the one that scheduled it.
        view: the ledger.
        now: the current time.
    """
    rule = rules.get(send.rule_id)
    if rule is None:
        return Drop(send.key, Reason.RULE_DELETED, f"rule {send.rule_id} no longer exists")
    if not rule.enabled:
        return Drop(send.key, Reason.RULE_DISABLED, f"rule {rule.id} is disabled")
    late = _too_late(rule, send.due_at, now)
    if late is not None:
        return Drop(send.key, Reason.MAX_LATE, late)
    window = rule.send_window
    if window is not None:
        zone, note = resolve_zone(window, send.cancel_match)
        opening = next_opening(window, now, zone)
        if opening > now:
            if window.outside is Outside.SKIP:
                when = f"the window had shut when it fell due ({_local(now, zone)})"
                return Drop(send.key, Reason.OUTSIDE_WINDOW, _outside(window, when, note))
            return Defer(send.key, opening)
    return _held_back(send, rule, rules, view, now) or Fire(send.key)


def _held_back(
    send: SendRecord, rule: Rule, rules: RuleSet, view: LedgerView, now: datetime
) -> Drop | None:
    step = rule.step(send.step)
    if step is not None:
        until = _cooldown_until(rule, step, send.user_id, view)
        if until is not None and until > now:
            return Drop(send.key, Reason.COOLDOWN, f"cooldown until {until.isoformat()}")
    for cap in rules.caps_for(send.payload.categories):
        since = now - timedelta(seconds=cap.per_s)
        if view.delivered_count_since(send.user_id, cap.categories, since) >= cap.max:
            return Drop(send.key, Reason.CAP_FULL, f"cap {cap.id}: {cap.max} already sent")
    return None


# How long a held send of a paused rule waits before it is looked at again, at most: a resume
# takes effect within this bound.
PAUSE_RECHECK_S: Final = 5


def decide_paused(send: SendRecord, pauses: Pauses, now: datetime) -> Drop | Defer | None:
    """What a pause of the send's rule does to a due send: held (deferred) or, for a pause
    with ``drop``, dropped as ``paused``; ``None`` when its rule is not paused now.

    Decided before :func:`decide_due`, from the pauses in force (trigmail/pauses.py).
    """
    pause = pauses.get(send.rule_id)
    if pause is None or not pause.in_force(now):
        return None
    why = f"rule {send.rule_id} paused" + (f": {pause.reason}" if pause.reason else "")
    if pause.drop:
        return Drop(send.key, Reason.PAUSED, why)
    recheck = now + timedelta(seconds=PAUSE_RECHECK_S)
    until = recheck if pause.until is None else min(pause.until, recheck)
    return Defer(send.key, until, Reason.PAUSED)
