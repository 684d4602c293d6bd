"""Warnings: rules that are valid but probably not what their author meant.

Each check is a small pure function over compiled rules; a warning never stops a load
(``validate --strict`` turns warnings into errors for CI).
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from trigmail.durations import format_duration
from trigmail.rules.model import Cap, Rule, Step
from trigmail.rules.quoting import quote
from trigmail.rules.yamlsource import Path


class Code(StrEnum):
    """A warning's name: a rule accepts one on purpose with ``acknowledge: [name]``."""

    SAME_TEMPLATE = "same_template"
    SELF_CANCEL = "self_cancel"
    LONG_COOLDOWN = "long_cooldown"
    UNCAPPED = "uncapped"


@dataclass(frozen=True)
class Lint:
    """A warning about ``rule``; ``path`` is relative to the rule's mapping."""

    rule: Rule
    path: Path
    message: str
    code: Code


def _send_path(step: Step) -> Path:
    # A plain rule's one step is written as the rule's own `send`.
    return ("send",) if step.number == 0 else ("steps", step.number - 1, "send")


def _same_template(rules: Sequence[Rule]) -> Iterator[Lint]:
    first: dict[tuple[str, str], Rule] = {}
    for rule in rules:
        if not rule.enabled:
            continue
        warned: set[str] = set()
        for event in rule.on:
            for step in rule.steps:
                if step.send.variants:
                    continue  # an A/B split: each user gets only one of its templates
                other = first.setdefault((event, step.send.template), rule)
                if other.id == rule.id or other.id in warned:
                    continue
                warned.add(other.id)
                yield Lint(
                    rule,
                    (*_send_path(step), "template"),
                    f"rule {quote(other.id)} (at {other.location}) also sends template "
                    f"{quote(step.send.template)} on {quote(event)}: a user would get it twice",
                    Code.SAME_TEMPLATE,
                )


# Placeholders that are the same for every event of one user: a key made only of these is
# one key per user (or per user and event name).
_PER_USER: Final = frozenset({"rule", "event", "user_id"})


def _one_key_per_user(rule: Rule) -> bool:
    text = getattr(rule.dedupe, "text", None)
    if not isinstance(text, str):
        return False
    names = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    return names <= _PER_USER


def _cancel_own_trigger(rules: Sequence[Rule]) -> Iterator[Lint]:
    """An event that both triggers and cancels a rule, where that is a mistake.

    "Restart the timer" (a win-back sent 30 days after the last order: each order cancels the
    pending one and schedules its own) is what the combination is for, and is not warned
    about. It goes wrong when the key is one per user (the second event cancels the first
    email, and its own is refused as a duplicate of the cancelled key: nobody ever gets it),
    and it does nothing when every email goes at once (nothing is pending to cancel).
    """
    for rule in rules:
        for index, cancel in enumerate(rule.cancel_on):
            if cancel.event not in rule.on:
                continue
            name = quote(cancel.event)
            if _one_key_per_user(rule):
                message = (
                    f"{name} both triggers and cancels this rule, and its dedupe key is one "
                    f"per user: a second {name} cancels the first email and its own is a "
                    "duplicate of the cancelled key, so the user never gets it; put "
                    "{event_id} in the key, or drop the cancel"
                )
            elif not rule.send_window and all(step.delay_s == 0 for step in rule.steps):
                message = (
                    f"{name} both triggers and cancels this rule, but every email goes at "
                    "once: nothing is ever pending to cancel"
                )
            else:
                continue
            yield Lint(rule, ("cancel_on", index), message, Code.SELF_CANCEL)


def _long_cooldown(rules: Sequence[Rule], retention_s: int) -> Iterator[Lint]:
    for rule in rules:
        if rule.cooldown_s > retention_s:
            yield Lint(
                rule,
                ("cooldown",),
                f"cooldown {format_duration(rule.cooldown_s)} is longer than the ledger keeps "
                f"sends ({format_duration(retention_s)}): it will act as "
                f"{format_duration(retention_s)}",
                Code.LONG_COOLDOWN,
            )


def _uncapped(rules: Sequence[Rule], caps: Sequence[Cap]) -> Iterator[Lint]:
    if not caps:
        return
    capped = {category for cap in caps for category in cap.categories}
    for rule in rules:
        for step in rule.steps:
            categories = step.send.categories
            if categories and not capped.intersection(categories):
                yield Lint(
                    rule,
                    (*_send_path(step), "category"),
                    f"no cap mentions {', '.join(map(repr, categories))}, so caps never "
                    "hold this email back (right for receipts, not for marketing)",
                    Code.UNCAPPED,
                )


def lint(rules: Sequence[Rule], caps: Sequence[Cap], retention_s: int) -> list[Lint]:
    """Return the warnings about ``rules`` and ``caps``.

    Args:
        rules: the compiled rules, in file order.
        caps: the compiled caps.
        retention_s: how long the ledger keeps sends.
    """
    return [
        *_same_template(rules),
        *_cancel_own_trigger(rules),
        *_long_cooldown(rules, retention_s),
        *_uncapped(rules, caps),
    ]
