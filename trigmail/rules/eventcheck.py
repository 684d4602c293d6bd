"""Rules against the events they read: names, fields, types, placeholders.

With an event catalogue (:mod:`trigmail.rules.catalog`) these are errors: an ``on:`` or
``cancel_on`` name no event has, a ``when`` path or template variable the rule's events do
not carry, a text compared with a number field (or a number with a text field). Without one,
the same mistakes are warnings where they can be guessed: a name close to one another rule
uses, a path whose first part is close to ``user`` or ``properties``, a number in quotes
compared with ``gt``/``gte``/``lt``/``lte``. Single-brace placeholders (``{ user.first_name }``,
sent as they are) are warned about either way, and errors when the catalogue knows the field.

Pure, over the rule files as written; valid rules cost one walk of their ``when`` and ``data``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from trigmail.rules.catalog import STANDARD_FIELDS, Catalog
from trigmail.rules.problems import Finding, Severity
from trigmail.rules.quoting import quote
from trigmail.rules.yamlsource import Path

# The parts of an event besides the standard fields (docs/design.md §1).
_EVENT_PARTS: Final = ("user", "properties", *sorted(STANDARD_FIELDS))
_ORDER_OPS: Final = frozenset({"gt", "gte", "lt", "lte"})
_VALUE_OPS: Final = _ORDER_OPS | {"eq", "ne", "in", "not_in"}
_NUMBER: Final = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)$")
# `{ user.first_name }`: one brace each side, a dotted path inside.
_SINGLE_BRACE: Final = re.compile(r"(?<!\{)\{\s*([A-Za-z_]\w*(?:\.\w+)+|[A-Za-z_]\w*)\s*\}(?!\})")


def _names(value: Any) -> list[tuple[int | None, str]]:
    if isinstance(value, str):
        return [(None, value)]
    if isinstance(value, list):
        return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]
    return []


def _cancel_names(value: Any) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for index, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, str):
            found.append(((index,), item))
        elif isinstance(item, Mapping) and isinstance(item.get("event"), str):
            found.append(((index, "event"), item["event"]))
    return found


def likely_typos(specs: Sequence[Any]) -> Mapping[str, str]:
    """Event names that look like a typo of another, by name: computed once per rule set.

    A name is suspect when a close one is named by more rules, or by as many but earlier in
    the files (the later one is likelier the new, misspelt one).
    """
    used = _used_names(specs)
    found = {}
    for name in used:
        close = _likely_typo(name, used)
        if close is not None:
            found[name] = close
    return found


def _used_names(specs: Sequence[Any]) -> Mapping[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for index, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            continue
        names = [n for _, n in _names(spec.get("on"))]
        names += [n for _, n in _cancel_names(spec.get("cancel_on"))]
        for name in dict.fromkeys(names):
            count, first = counts.get(name, (0, index))
            counts[name] = (count + 1, first)
    return counts


def _likely_typo(name: str, used: Mapping[str, tuple[int, int]]) -> str | None:
    """A name close to ``name`` that more rules use, or as many but earlier in the files."""
    count, first = used.get(name, (0, 1 << 30))
    others = [other for other in used if other != name]
    for close in difflib.get_close_matches(name, others, n=3, cutoff=0.85):
        other_count, other_first = used[close]
        if other_count > count or (other_count == count and other_first < first):
            return close
    return None


def check_rule(
    spec: Any,
    base: Path,
    catalog: Catalog | None,
    typos: Mapping[str, str],
    fields: Mapping[Path, Sequence[str]],
) -> list[Finding]:
    """Return what is wrong between one rule (as written at ``base``) and the events.

    Args:
        typos: from :func:`likely_typos`.
        fields: the event paths each ``send`` of the compiled rule reads (by the path of the
            ``send``); none for a rule that did not build.
    """
    if not isinstance(spec, Mapping):
        return []
    checker = _Checker(base, catalog, typos, fields)
    on = [name for _, name in _names(spec.get("on"))]
    for index, name in _names(spec.get("on")):
        checker.name(("on",) if index is None else ("on", index), name)
    for where, name in _cancel_names(spec.get("cancel_on")):
        checker.name(("cancel_on", *where), name)
    events = [n for n in on if catalog is None or n in catalog.events]
    checker.condition(spec.get("when"), ("when",), events)
    checker.data(spec.get("send"), ("send",), events)
    steps = spec.get("steps")
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, Mapping):
            checker.condition(step.get("when"), ("steps", index, "when"), events)
            checker.data(step.get("send"), ("steps", index, "send"), events)
    return checker.findings


class _Checker:
    def __init__(
        self,
        base: Path,
        catalog: Catalog | None,
        typos: Mapping[str, str],
        fields: Mapping[Path, Sequence[str]],
    ) -> None:
        self.base = base
        self.catalog = catalog
        self.typos = typos
        self.fields = fields
        self.findings: list[Finding] = []
        # Without a catalogue a guess is a warning; with one the catalogue says for sure.
        self.severity = Severity.WARNING if catalog is None else Severity.ERROR

    def add(self, path: Path, message: str, severity: Severity | None = None) -> None:
        self.findings.append(Finding((*self.base, *path), message, severity or self.severity))

    def name(self, path: Path, name: str) -> None:
        if self.catalog is not None:
            if name not in self.catalog.events:
                near = difflib.get_close_matches(name, list(self.catalog.events), n=1)
                hint = f"did you mean {near[0]!r}?" if near else "add it to events.yaml"
                self.add(path, f"no event {quote(name)} in the event catalogue ({hint})")
            return
        close = self.typos.get(name)
        if close is not None:
            self.add(
                path,
                f"{quote(name)} is close to the event {close!r} other rules name: a typo? "
                "(an events.yaml catalogue makes this check sure)",
            )

    def field(self, path: Path, field: str, events: Sequence[str], what: str) -> None:
        catalog = self.catalog
        if catalog is None:
            head = field.split(".", 1)[0]
            if head in _EVENT_PARTS:
                return
            close = difflib.get_close_matches(head, _EVENT_PARTS, n=1, cutoff=0.7)
            if close:
                self.add(
                    path,
                    f"{what} {quote(field)}: events have no {quote(head)}; did you "
                    f"mean {close[0]!r}?",
                )
            return
        known = [catalog.events[name] for name in events]
        if not known or any(event.knows(field) for event in known):
            return
        close = difflib.get_close_matches(field, catalog.paths(events), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "add it to events.yaml if it is new"
        self.add(path, f"{what} {quote(field)}: no {' or '.join(events)} event has it ({hint})")

    def condition(self, spec: Any, path: Path, events: Sequence[str]) -> None:
        if not isinstance(spec, Mapping):
            return
        for key, value in spec.items():
            if key in ("all", "any") and isinstance(value, list):
                for index, item in enumerate(value):
                    self.condition(item, (*path, key, index), events)
            elif key == "not":
                self.condition(value, (*path, key), events)
            elif isinstance(key, str):
                self.field((*path, key), key, events, "the condition reads")
                tests = value if isinstance(value, Mapping) else {"eq": value}
                for op, expected in tests.items():
                    self.compared((*path, key, op), key, str(op), expected, events)

    def compared(
        self, path: Path, field: str, op: str, expected: Any, events: Sequence[str]
    ) -> None:
        if op not in _VALUE_OPS:
            return
        values = expected if isinstance(expected, list) else [expected]
        if self.catalog is None:
            if op in _ORDER_OPS and isinstance(expected, str) and _NUMBER.match(expected):
                self.add(
                    path,
                    f"{quote(expected)} is text, so {op} compares text and never matches a "
                    f"number: write {expected} without quotes if {field} is a number",
                )
            return
        types: set[str] = set()
        for name in events:
            types |= self.catalog.events[name].types(field)
        if types == {"number"} and any(isinstance(v, str) for v in values):
            self.add(
                path,
                f"{field} is a number in the event catalogue but {quote(_first(values, str))} "
                "is text: it never matches; write the number without quotes",
            )
        elif types == {"string"} and any(_is_number(v) for v in values):
            self.add(
                path,
                f"{field} is text in the event catalogue but {_first(values, int)} is a "
                "number: it never matches; put it in quotes",
            )

    def data(self, send: Any, path: Path, events: Sequence[str]) -> None:
        data = send.get("data") if isinstance(send, Mapping) else None
        strings = list(_strings(data, (*path, "data")))
        for where, text in strings:
            for match in _SINGLE_BRACE.finditer(text):
                inner = match.group(1)
                known = (
                    self.catalog is not None
                    and bool(events)
                    and any(self.catalog.events[n].knows(inner) for n in events)
                )
                self.add(
                    where,
                    f"{quote(match.group(0))} has single braces, so it is sent as it is: write "
                    f"{{{{ {inner} }}}}",
                    Severity.ERROR if known else Severity.WARNING,
                )
        # The compiled data knows what it reads; the first string naming a field is where.
        for field in dict.fromkeys(self.fields.get(path, ())):
            where = next((w for w, text in strings if field in text), (*path, "data"))
            self.field(where, field, events, "the template reads")


def _strings(value: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _first(values: Sequence[Any], kind: type) -> Any:
    if kind is str:
        return next(v for v in values if isinstance(v, str))
    return next(v for v in values if _is_number(v))
