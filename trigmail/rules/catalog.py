"""The event catalogue: which events exist and what fields they carry (``rules.d/events.yaml``).

Optional. With it, ``validate`` knows a misspelt ``on:`` name, a ``when`` path or template
variable no event has, and a text compared with a number (:mod:`trigmail.rules.eventcheck`).
``trigmail catalog EVENTS.jsonl`` drafts it from real events (:func:`draft`); people check it
and keep it beside the rules::

    events:
      cart_abandoned:
        properties.cart_value: number
        properties.cart_url: string
        user.first_name: string
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from trigmail.rules.problems import Finding
from trigmail.rules.quoting import quote
from trigmail.rules.yamlsource import YamlDocument, load_document

CATALOGUE_FILE: Final = "events.yaml"
# Every event has these (docs/design.md §1); they need no entry.
STANDARD_FIELDS: Final = frozenset({"id", "event", "ts", "user_id", "email"})
TYPES: Final = ("string", "number", "boolean", "list", "object", "null")


@dataclass(frozen=True)
class EventType:
    """One event's fields: a dotted path to the JSON types seen there."""

    name: str
    fields: Mapping[str, frozenset[str]]

    def knows(self, path: str) -> bool:
        """Whether ``path`` is a field, a parent of fields, or inside a list or object field."""
        if path in self.fields or path.split(".", 1)[0] in STANDARD_FIELDS:
            return True
        prefix = path + "."
        if any(known.startswith(prefix) for known in self.fields):
            return True
        parts = path.split(".")
        for end in range(len(parts) - 1, 0, -1):
            types = self.fields.get(".".join(parts[:end]))
            if types is not None:
                # Inside a list or an object the catalogue does not detail: anything goes.
                return bool(types & {"list", "object"})
        return False

    def types(self, path: str) -> frozenset[str]:
        return self.fields.get(path, frozenset())


@dataclass(frozen=True)
class Catalog:
    """The events a catalogue file declares, by name."""

    events: Mapping[str, EventType] = field(default_factory=dict)

    def paths(self, names: Iterable[str]) -> list[str]:
        """Every field path of the events ``names`` (for a "did you mean")."""
        found: dict[str, None] = dict.fromkeys(sorted(STANDARD_FIELDS))
        for name in names:
            event = self.events.get(name)
            if event is not None:
                found.update(dict.fromkeys(event.fields))
        return list(found)


def parse_catalog(text: str) -> tuple[Catalog, YamlDocument, list[Finding]]:
    """Read a catalogue file's text; never raises. Problems come back as findings."""
    document = load_document(text)
    findings = [Finding(issue.path, issue.message) for issue in document.issues]
    data = document.data
    if data is None:
        return Catalog(), document, findings
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, dict):
        findings.append(Finding((), "an event catalogue is a mapping with 'events:'"))
        return Catalog(), document, findings
    parsed = {}
    for name, spec in events.items():
        fields: dict[str, frozenset[str]] = {}
        if spec is not None and not isinstance(spec, dict):
            message = f"event {quote(name)} takes a mapping of field paths to types"
            findings.append(Finding(("events", name), message))
            continue
        for path, kind in (spec or {}).items():
            types = frozenset(str(kind or "").replace(" ", "").split("|"))
            unknown = sorted(types - set(TYPES))
            if unknown:
                message = f"{quote('|'.join(unknown))} is not a type: use {', '.join(TYPES)}"
                findings.append(Finding(("events", name, path), message))
                continue
            fields[str(path)] = types
        parsed[str(name)] = EventType(str(name), fields)
    return Catalog(parsed), document, findings


# -- drafting from events ---------------------------------------------------------------------


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "null"


def _leaves(obj: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if not prefix and key in STANDARD_FIELDS:
            continue
        if isinstance(value, dict) and value:
            yield from _leaves(value, path + ".")
        else:
            yield path, _type(value)


@dataclass
class Draft:
    """What :func:`draft` saw: events by name, their fields' types and counts."""

    seen: Counter[str] = field(default_factory=Counter)
    fields: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)
    bad_lines: int = 0

    def add(self, obj: Mapping[str, Any]) -> None:
        name = obj.get("event")
        if not isinstance(name, str) or not name:
            self.bad_lines += 1
            return
        self.seen[name] += 1
        by_path = self.fields.setdefault(name, {})
        for path, kind in _leaves(obj):
            by_path.setdefault(path, Counter())[kind] += 1


def draft(lines: Iterable[bytes | str]) -> Draft:
    """Read JSON event lines (bad ones are counted, not fatal) into a :class:`Draft`."""
    result = Draft()
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            result.bad_lines += 1
            continue
        if isinstance(obj, dict):
            result.add(obj)
        else:
            result.bad_lines += 1
    return result


def draft_yaml(result: Draft, source: str) -> str:
    """The catalogue file for a draft, with how often each event and field was seen."""
    total = sum(result.seen.values())
    out = [
        f"# Event catalogue drafted by `trigmail catalog` from {total:,} events of {source}.",
        "# Check it, then keep it as rules.d/events.yaml: validate checks the rules against it.",
        "# A type per field path: " + ", ".join(TYPES) + " (several joined by |).",
        "events:",
    ]
    for name in sorted(result.seen):
        count = result.seen[name]
        out.append(f"  {_key(name)}:  # {count:,} events")
        fields = result.fields.get(name, {})
        if not fields:
            out[-1] = f"  {_key(name)}: {{}}  # {count:,} events"
        for path in sorted(fields):
            kinds = fields[path]
            present = sum(kinds.values())
            types = "|".join(kind for kind in TYPES if kind in kinds)
            note = "" if present == count else f"  # in {present:,} of {count:,}"
            out.append(f"    {_key(path)}: {types}{note}")
    return "\n".join(out) + "\n"


def _key(text: str) -> str:
    plain = text.replace("_", "").replace(".", "").replace("-", "").isalnum()
    return text if plain and not text[0].isdigit() else json.dumps(text)
