"""Warnings: rules that are valid but probably not what their author meant.

Each check is a small pure function over compiled rules; a warning never stops a load
(``validate --strict`` turns warnings into errors for CI).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from trigmail.durations import format_duration
from trigmail.rules.model import Cap, Rule, Step
from trigmail.rules.quoting import quote
from trigmail.rules.yamlsource import Path


@dataclass(frozen=True)
class Lint:
    """A warning about ``rule``; ``path`` is relative to the rule's mapping."""

    rule: Rule
    path: Path
    message: str


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
                )


def _cancel_own_trigger(rules: Sequence[Rule]) -> Iterator[Lint]:
    for rule in rules:
        for index, cancel in enumerate(rule.cancel_on):
            if cancel.event in rule.on:
                yield Lint(
                    rule,
                    ("cancel_on", index),
                    f"{quote(cancel.event)} both triggers and cancels this rule: each new "
                    f"{quote(cancel.event)} cancels the email the previous one scheduled",
                )


def _long_cooldown(rules: Sequence[Rule], retention_s: int) -> Iterator[Lint]:
    for rule in rules:
        if rule.cooldown_s > retention_s:
            yield Lint(
                rule,
                ("cooldown",),
                f"cooldown {format_duration(rule.cooldown_s)} is longer than the ledger keeps "
                f"sends ({format_duration(retention_s)}): it will act as "
                f"{format_duration(retention_s)}",
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
                    f"note: no cap mentions {', '.join(map(repr, categories))}, so caps never "
                    "hold this email back (right for receipts, not for marketing)",
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
