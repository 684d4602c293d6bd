"""Semantic checks of one structurally valid rule file, and its compiled rules and caps.

The JSON Schema has already vouched for the shape (keys, types); this module checks what a
schema cannot (durations, times, timezones, conditions, templates, dedupe keys, ``send``
xor ``steps``) and compiles each value once. Every finding carries its key path inside the
document; ``rules.loader`` turns paths into lines and columns.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any, Final

from email_validator import EmailNotValidError, validate_email

from trigmail.durations import parse_duration
from trigmail.errors import DurationError, SpecError
from trigmail.rules.conditions import compile_condition
from trigmail.rules.dedupe import DEFAULT_DEDUPE, compile_key
from trigmail.rules.model import (
    Address,
    CancelOn,
    Cap,
    Condition,
    DataTemplate,
    KeyTemplate,
    Location,
    OnDoubt,
    Outside,
    Rule,
    SendSpec,
    SendWindow,
    Step,
    Variant,
)
from trigmail.rules.problems import Finding, Severity
from trigmail.rules.quoting import quote
from trigmail.rules.templating import compile_data
from trigmail.rules.yamlsource import Path

Locate = Callable[[Path], Location]

_TIME: Final = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
# A send_window timezone starting with these is read from the event, per user.
TIMEZONE_PATH_PREFIXES: Final = ("user.", "properties.")


class _Checker:
    """Compiles the values of one rule or cap, collecting findings instead of stopping."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.findings: list[Finding] = []

    def error(self, path: Path, message: str, *, at_key: bool = False) -> None:
        self.findings.append(Finding((*self.base, *path), message, at_key=at_key))

    def risks(self, path: Path, risks: Iterable[tuple[Path, str]]) -> None:
        for where, risk in risks:
            message = f"{risk} (a render over its limits is a template_error; docs/security.md)"
            self.findings.append(Finding((*self.base, *path, *where), message, Severity.WARNING))

    def duration(self, spec: Mapping[str, Any], path: Path) -> int | None:
        value = _get(spec, path)
        if value is None:
            return None
        try:
            return parse_duration(value)
        except DurationError as exc:
            self.error(path, str(exc))
            return None

    def condition(self, spec: Mapping[str, Any] | None, path: Path) -> Condition | None:
        if spec is None:
            return None
        try:
            return compile_condition(spec)
        except SpecError as exc:
            self.error((*path, *exc.path), exc.message)
            return None

    def dedupe(self, text: str) -> KeyTemplate | None:
        try:
            return compile_key(text)
        except SpecError as exc:
            self.error(("dedupe",), exc.message)
            return None

    def data(self, spec: Mapping[str, Any], path: Path) -> DataTemplate | None:
        if "data" not in spec:
            return None
        try:
            data = compile_data(spec["data"])
        except SpecError as exc:
            self.error((*path, "data", *exc.path), exc.message)
            return None
        self.risks((*path, "data"), data.risks)
        return data

    def variants(self, spec: Mapping[str, Any], path: Path) -> tuple[Variant, ...]:
        if "template" in spec and "variants" in spec:
            self.error(
                (*path, "variants"),
                "a send has either 'template' (one email) or 'variants' (an A/B split), not both",
                at_key=True,
            )
        elif "template" not in spec and "variants" not in spec:
            self.error(path, "missing required key 'template' (or 'variants' for an A/B split)")
        variants: list[Variant] = []
        seen: set[str] = set()
        for index, item in enumerate(spec.get("variants", ())):
            where: Path = (*path, "variants", index)
            if item["id"] in seen:
                self.error((*where, "id"), f"variant id {quote(item['id'])} is used twice")
            seen.add(item["id"])
            if item["weight"] <= 0:
                self.error(
                    (*where, "weight"),
                    "a variant's weight must be more than 0 (remove the variant to stop it)",
                )
            data = self.data(item, where)
            variants.append(Variant(item["id"], item["weight"], item["template"], data))
        return tuple(variants)

    def send(self, spec: Mapping[str, Any], path: Path) -> SendSpec | None:
        data = self.data(spec, path)
        variants = self.variants(spec, path)
        category = spec.get("category", ())
        return SendSpec(
            template=spec.get("template", ""),
            variants=variants,
            data=data,
            categories=(category,) if isinstance(category, str) else tuple(category),
            asm_group=spec.get("asm_group"),
            from_=self.address(spec.get("from"), (*path, "from")),
            reply_to=self.address(spec.get("reply_to"), (*path, "reply_to")),
        )

    def address(self, spec: str | Mapping[str, Any] | None, path: Path) -> Address | None:
        if spec is None:
            return None
        email, name = (spec, None) if isinstance(spec, str) else (spec["email"], spec.get("name"))
        try:
            validate_email(email, check_deliverability=False)
        except EmailNotValidError as exc:
            self.error(
                path if isinstance(spec, str) else (*path, "email"), f"{quote(email)}: {exc}"
            )
        return Address(email=email, name=name)

    def window(self, spec: Mapping[str, Any] | None) -> SendWindow | None:
        if spec is None:
            return None
        start, end = self.time(spec["from"], "from"), self.time(spec["to"], "to")
        timezone = spec.get("timezone", "UTC")
        is_path = timezone.startswith(TIMEZONE_PATH_PREFIXES)
        if not is_path and not _is_timezone(timezone):
            self.error(("send_window", "timezone"), _timezone_message(timezone))
        fallback = spec.get("fallback_timezone", "UTC")
        if "fallback_timezone" in spec and not _is_timezone(fallback):
            message = _timezone_message(fallback, path_allowed=False)
            self.error(("send_window", "fallback_timezone"), message)
        if start is None or end is None:
            return None
        if start == end:
            self.error(
                ("send_window", "to"),
                f"the window opens and closes at {spec['to']}: give two different times "
                "(or remove send_window to send at any hour)",
            )
        outside = Outside(spec.get("outside", Outside.WAIT))
        return SendWindow(start, end, timezone, is_path, outside, fallback)

    def time(self, text: str, key: str) -> int | None:
        match = _TIME.match(text.strip())
        if match is None:
            self.error(
                ("send_window", key),
                f"{quote(text)} is not a time of day: write HH:MM from 00:00 to 23:59, in quotes",
            )
            return None
        return int(match.group(1)) * 60 + int(match.group(2))


def _get(spec: Mapping[str, Any], path: Path) -> Any:
    value: Any = spec
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else value[part]
    return value


def _is_timezone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    # A directory of the tz database ("America") or an over-long name fails as an OSError.
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


@cache
def _timezone_names() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


def _timezone_message(name: str, *, path_allowed: bool = True) -> str:
    close = difflib.get_close_matches(name, _timezone_names(), n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}?" if close else "use a name such as 'Europe/Lisbon'"
    if not path_allowed:
        return f"unknown timezone {quote(name)} ({hint})"
    return (
        f"unknown timezone {quote(name)} ({hint}; or a path into the event starting with "
        f"{' or '.join(TIMEZONE_PATH_PREFIXES)})"
    )


def _steps(check: _Checker, spec: Mapping[str, Any]) -> tuple[Step, ...]:
    if "send" in spec:
        send = check.send(spec["send"], ("send",))
        delay_s = check.duration(spec, ("delay",)) or 0
        return (Step(0, delay_s, send),) if send is not None else ()
    steps = []
    for index, step_spec in enumerate(spec.get("steps", ())):
        path: Path = ("steps", index)
        send = check.send(step_spec["send"], (*path, "send"))
        delay_s = check.duration(spec, (*path, "delay")) or 0
        when = check.condition(step_spec.get("when"), (*path, "when"))
        cancel_on = _cancel_on(step_spec, step=index + 1)
        if send is not None:
            steps.append(Step(index + 1, delay_s, send, when, cancel_on))
    return tuple(steps)


def _check_shape(check: _Checker, spec: Mapping[str, Any]) -> None:
    if "send" in spec and "steps" in spec:
        check.error(
            ("steps",),
            "a rule has either 'send' (one email) or 'steps' (a sequence), not both",
            at_key=True,
        )
    elif "send" not in spec and "steps" not in spec:
        check.error(("id",), "the rule sends nothing: give it 'send' (one email) or 'steps'")
    if "steps" in spec and "delay" in spec:
        check.error(
            ("delay",),
            "a sequence has no rule-wide delay: give each step its own 'delay'",
            at_key=True,
        )


_SHARE: Final = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)\s*%\s*$")


def _holdout(check: _Checker, text: str | None) -> float:
    """``holdout: 10%`` as a share from 0 to 1."""
    if text is None:
        return 0.0
    match = _SHARE.match(text)
    percent = float(match.group(1)) if match else None
    if percent is None or percent >= 100:
        check.error(
            ("holdout",),
            f"{quote(text)} is not a holdout share: write a percentage under 100%, such as 10%",
        )
        return 0.0
    return percent / 100


def _cancel_on(spec: Mapping[str, Any], step: int | None = None) -> tuple[CancelOn, ...]:
    return tuple(
        CancelOn(item, step=step)
        if isinstance(item, str)
        else CancelOn(item["event"], item.get("match"), step)
        for item in spec.get("cancel_on", ())
    )


def build_rule(
    spec: Mapping[str, Any], base: Path, location: Location
) -> tuple[Rule | None, list[Finding]]:
    """Check and compile one structurally valid rule.

    Args:
        spec: the rule's mapping, as the schema accepted it.
        base: its key path in the document (``("rules", 3)``).
        location: where its ``id`` was written.

    Returns:
        The rule (``None`` when anything is wrong) and the findings.
    """
    check = _Checker(base)
    _check_shape(check, spec)
    when = check.condition(spec.get("when"), ("when",))
    steps = _steps(check, spec)
    dedupe = check.dedupe(spec.get("dedupe", DEFAULT_DEDUPE))
    cooldown_s = check.duration(spec, ("cooldown",))
    max_late_s = check.duration(spec, ("max_late",))
    window = check.window(spec.get("send_window"))
    holdout = _holdout(check, spec.get("holdout"))
    # Warnings (a costly template) leave the rule in force; any error takes it out.
    if any(f.severity is Severity.ERROR for f in check.findings) or dedupe is None:
        return None, check.findings
    on = spec["on"]
    rule = Rule(
        id=spec["id"],
        on=(on,) if isinstance(on, str) else tuple(on),
        steps=steps,
        dedupe=dedupe,
        description=spec.get("description", ""),
        when=when,
        cancel_on=_cancel_on(spec),
        cooldown_s=cooldown_s or 0,
        max_late_s=max_late_s,
        send_window=window,
        on_doubt=OnDoubt(spec.get("on_doubt", OnDoubt.SKIP)),
        enabled=spec.get("enabled", True),
        location=location,
        holdout=holdout,
    )
    return rule, check.findings


def build_cap(
    spec: Mapping[str, Any], base: Path, location: Location
) -> tuple[Cap | None, list[Finding]]:
    """Check and compile one structurally valid cap; as :func:`build_rule`."""
    check = _Checker(base)
    per_s = check.duration(spec, ("per",))
    if per_s == 0:
        check.error(("per",), "a cap counts over a period: 'per' must be longer than 0")
    if check.findings or per_s is None:
        return None, check.findings
    cap = Cap(spec["id"], spec["max"], per_s, tuple(spec["categories"]), location)
    return cap, []
