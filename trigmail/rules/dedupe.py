"""Dedupe keys (``dedupe``): ``str.format``-like templates, compiled once per rule.

The placeholders are ``{rule} {event} {event_id} {user_id} {date}`` (the UTC date of the
event, ``YYYY-MM-DD``) and ``{properties.NAME}`` (any dotted path, rendered with ``str()``);
``{{`` and ``}}`` are literal braces. A ``{properties.NAME}`` that is missing or ``null`` raises
:class:`TemplateRenderError`: a key that silently read ``None`` would merge unrelated emails
into one.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Final

from trigmail.errors import SpecError, TemplateRenderError
from trigmail.events import MISSING
from trigmail.rules.quoting import quote

if TYPE_CHECKING:
    from trigmail.events import Event

DEFAULT_DEDUPE: Final = "{rule}:{event_id}"

_KeyPart = Callable[[str, "Event"], str]

# The placeholders ``str.format`` reads itself, from argument 0 (the rule id) or 1 (the event).
_FIELDS: Final[Mapping[str, str]] = {
    "rule": "0",
    "event": "1.name",
    "event_id": "1.id",
    "user_id": "1.user_id",
}
_PLACEHOLDER_HELP: Final = "use {rule}, {event}, {event_id}, {user_id}, {date} or {properties.NAME}"


@dataclass(frozen=True, slots=True)
class CompiledKey:
    """A compiled ``dedupe`` template: a bound ``str.format`` over the rule id (argument 0),
    the event (1) and the values of ``extras`` (2 on), the placeholders ``str.format`` cannot
    compute or check itself: ``{date}`` and ``{properties.NAME}``."""

    text: str
    format: Callable[..., str]
    extras: tuple[_KeyPart, ...]

    def render(self, rule_id: str, event: Event) -> str:
        """Return the idempotency key of ``rule_id`` for ``event``.

        Raises:
            TemplateRenderError: when a ``{properties.NAME}`` is missing or null in the event.
        """
        # Rendered twice per rule and event (the batch's key read, then the decision): the
        # common keys, of the rule and the event's own fields, are one C call.
        if not self.extras:
            return self.format(rule_id, event)
        return self.format(rule_id, event, *[extra(rule_id, event) for extra in self.extras])


def compile_key(text: str) -> CompiledKey:
    """Compile a rule's ``dedupe`` template.

    Raises:
        SpecError: on an unknown placeholder or unbalanced braces, with the path ``()``.
    """
    if not text:
        raise SpecError((), "a dedupe key must not be empty")
    template: list[str] = []
    extras: list[_KeyPart] = []
    for literal, name in _key_parts(text):
        template.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        field = _FIELDS.get(name)
        if field is None:
            extras.append(_extra(name))
            field = str(len(extras) + 1)
        template.append(f"{{{field}}}")
    return CompiledKey(text, "".join(template).format, tuple(extras))


def _key_parts(text: str) -> Iterator[tuple[str, str | None]]:
    """The template's pieces: literal text, then the placeholder after it (if any)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise SpecError(
            (), f"unbalanced braces in {quote(text)}: {exc} (write {{{{ for a brace)"
        ) from None
    for literal, name, spec, conversion in parsed:
        if name is not None:
            placeholder = (
                name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            )
            if placeholder != name:
                raise SpecError(
                    (), f"unknown placeholder '{{{placeholder}}}' ({_PLACEHOLDER_HELP})"
                )
        yield literal, name


def _extra(name: str) -> _KeyPart:
    if name == "date":
        return _date
    head, _, path = name.partition(".")
    if head != "properties" or not path or not all(path.split(".")):
        raise SpecError((), f"unknown placeholder '{{{name}}}' ({_PLACEHOLDER_HELP})")

    def property_value(_rule_id: str, event: Event) -> str:
        value = event.lookup(name)
        if value is MISSING or value is None:
            state = "missing" if value is MISSING else "null"
            raise TemplateRenderError(f"dedupe: {name} is {state}")
        return str(value)

    return property_value


def _date(_rule_id: str, event: Event) -> str:
    return event.ts.astimezone(UTC).date().isoformat()
