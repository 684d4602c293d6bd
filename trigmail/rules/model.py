"""The compiled, immutable rule set the engine decides from.

``rules.loader`` builds these from YAML; nothing here parses or does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from trigmail.events import Event


class OnDoubt(StrEnum):
    """What to do with a send that may or may not have reached the provider."""

    SKIP = "skip"
    RESEND = "resend"
    # Wait up to delivery.verify_after for webhook evidence; without any, send again once.
    VERIFY = "verify"


@dataclass(frozen=True)
class Location:
    """Where something was written: 1-based line and column in ``file``."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Condition(Protocol):
    """A compiled ``when`` condition."""

    def check(self, event: Event) -> str | None:
        """Return ``None`` when the condition holds, else what failed (``path op value``)."""
        ...


class DataTemplate(Protocol):
    """Compiled ``send.data``: Jinja expressions over the event, parsed once."""

    def render(self, event: Event) -> dict[str, Any]:
        """Return the dynamic template data; raises ``TemplateRenderError`` on a missing field."""
        ...


class KeyTemplate(Protocol):
    """A compiled ``dedupe`` template such as ``{rule}:{user_id}:{date}``."""

    def render(self, rule_id: str, event: Event) -> str:
        """Return the idempotency key; raises ``TemplateRenderError`` on a missing field."""
        ...


@dataclass(frozen=True)
class Address:
    """A sender or reply-to address."""

    email: str
    name: str | None = None


@dataclass(frozen=True)
class Variant:
    """One arm of an A/B split: its template, and its own data (else the send's)."""

    id: str
    weight: float
    template: str
    data: DataTemplate | None = None


@dataclass(frozen=True)
class SendSpec:
    """What to send: a SendGrid dynamic template and how to fill it.

    ``data`` is ``None`` when the rule gives none: then the event's ``user`` and
    ``properties`` merged are the template data. With ``variants`` (an A/B split),
    ``template`` is empty and each user gets one variant's template (``trigmail.assign``).
    """

    template: str
    data: DataTemplate | None = None
    categories: tuple[str, ...] = ()
    asm_group: int | None = None
    from_: Address | None = None
    reply_to: Address | None = None
    variants: tuple[Variant, ...] = ()


@dataclass(frozen=True)
class CancelOn:
    """An event that cancels the rule's pending sends for the same user.

    With ``match`` (a dotted path), only sends whose trigger had the same value there. With
    ``step`` (a sequence step's ``cancel_on``), only that step's sends: the others still go.
    """

    event: str
    match: str | None = None
    step: int | None = None

    def applies_to(self, step: int) -> bool:
        return self.step is None or self.step == step


@dataclass(frozen=True)
class Step:
    """One email of a rule. A plain rule has one step numbered 0; a sequence's are 1, 2, …

    ``delay_s`` counts from the trigger event's time, for every step. ``cancel_on`` is the
    step's own (each with ``step`` set to ``number``).
    """

    number: int
    delay_s: int
    send: SendSpec
    when: Condition | None = None
    cancel_on: tuple[CancelOn, ...] = ()
    #: ``delay_s`` as a timedelta, made once: added to every trigger's time.
    delay: timedelta = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "delay", timedelta(seconds=self.delay_s))


class Outside(StrEnum):
    """What a send that falls outside its send window does."""

    WAIT = "wait"  # it goes out when the window next opens
    SKIP = "skip"  # it is dropped, reason ``outside_window``


@dataclass(frozen=True)
class SendWindow:
    """Local hours in which a send may go out; ``end_min`` < ``start_min`` spans midnight.

    ``timezone`` is an IANA name, or a dotted path into the event when ``timezone_is_path``;
    ``fallback_timezone`` (an IANA name) stands in for a path that holds no valid name.
    """

    start_min: int
    end_min: int
    timezone: str = "UTC"
    timezone_is_path: bool = False
    outside: Outside = Outside.WAIT
    fallback_timezone: str = "UTC"


@dataclass(frozen=True)
class Rule:
    """One compiled rule."""

    id: str
    on: tuple[str, ...]
    steps: tuple[Step, ...]
    dedupe: KeyTemplate
    description: str = ""
    when: Condition | None = None
    cancel_on: tuple[CancelOn, ...] = ()
    cooldown_s: int = 0
    max_late_s: int | None = None
    send_window: SendWindow | None = None
    on_doubt: OnDoubt = OnDoubt.SKIP
    enabled: bool = True
    location: Location | None = None
    #: The share of users (0 to 1) held out as a control group: they get no email.
    holdout: float = 0.0
    #: The rule's ``cancel_on`` followed by its steps' own.
    cancels: tuple[CancelOn, ...] = field(init=False, repr=False, compare=False)
    #: The trigger event's paths a send must keep once the event is gone: the ``match`` paths
    #: of every ``cancel_on`` and a send window's time zone path.
    kept_paths: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _steps: Mapping[int, Step] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived once: all are read for every event or due send of the rule.
        cancels = self.cancel_on + tuple(c for step in self.steps for c in step.cancel_on)
        object.__setattr__(self, "cancels", cancels)
        paths = [cancel.match for cancel in cancels if cancel.match is not None]
        window = self.send_window
        if window is not None and window.timezone_is_path:
            paths.append(window.timezone)
        object.__setattr__(self, "kept_paths", tuple(dict.fromkeys(paths)))
        object.__setattr__(self, "_steps", {step.number: step for step in self.steps})

    def step(self, number: int) -> Step | None:
        return self._steps.get(number)


@dataclass(frozen=True)
class Cap:
    """At most ``max`` emails per user in any ``per_s`` window, across ``categories``."""

    id: str
    max: int
    per_s: int
    categories: tuple[str, ...]
    location: Location | None = None


def _index_by_event(rules: tuple[Rule, ...]) -> Mapping[str, tuple[Rule, ...]]:
    index: dict[str, list[Rule]] = {}
    for rule in rules:
        for name in rule.on:
            index.setdefault(name, []).append(rule)
    return {name: tuple(found) for name, found in index.items()}


def _index_cancellers(
    rules: tuple[Rule, ...],
) -> Mapping[str, tuple[tuple[Rule, CancelOn], ...]]:
    index: dict[str, list[tuple[Rule, CancelOn]]] = {}
    for rule in rules:
        for cancel in rule.cancels:
            index.setdefault(cancel.event, []).append((rule, cancel))
    return {name: tuple(found) for name, found in index.items()}


@dataclass(frozen=True)
class RuleSet:
    """An immutable set of rules and caps; ``version`` is a hash of the source text."""

    rules: tuple[Rule, ...] = ()
    caps: tuple[Cap, ...] = ()
    version: str = "empty"
    _by_id: Mapping[str, Rule] = field(init=False, repr=False, compare=False)
    _by_event: Mapping[str, tuple[Rule, ...]] = field(init=False, repr=False, compare=False)
    _cancellers: Mapping[str, tuple[tuple[Rule, CancelOn], ...]] = field(
        init=False, repr=False, compare=False
    )
    _cooling: frozenset[str] = field(init=False, repr=False, compare=False)
    _caps_for: dict[tuple[str, ...], tuple[Cap, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        # Indexes are derived once here so the per-event hot path is a dict lookup.
        object.__setattr__(self, "_by_id", {rule.id: rule for rule in self.rules})
        object.__setattr__(self, "_by_event", _index_by_event(self.rules))
        object.__setattr__(self, "_cancellers", _index_cancellers(self.rules))
        cooling = frozenset(name for rule in self.rules if rule.cooldown_s > 0 for name in rule.on)
        object.__setattr__(self, "_cooling", cooling)

    def get(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    def triggered_by(self, event_name: str) -> tuple[Rule, ...]:
        return self._by_event.get(event_name, ())

    def cancelled_by(self, event_name: str) -> tuple[tuple[Rule, CancelOn], ...]:
        return self._cancellers.get(event_name, ())

    def cools_down(self, event_name: str) -> bool:
        """Whether an event of this name triggers a rule that has a cooldown."""
        return event_name in self._cooling

    def caps_for(self, categories: tuple[str, ...]) -> tuple[Cap, ...]:
        # Asked for every due send; a rule set meets only a few distinct category tuples.
        found = self._caps_for.get(categories)
        if found is None:
            wanted = set(categories)
            found = tuple(cap for cap in self.caps if not wanted.isdisjoint(cap.categories))
            self._caps_for[categories] = found
        return found
