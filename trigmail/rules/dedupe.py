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

_PLACEHOLDERS: Final[Mapping[str, _KeyPart]] = {
    "rule": lambda rule_id, _event: rule_id,
    "event": lambda _rule_id, event: event.name,
    "event_id": lambda _rule_id, event: event.id,
    "user_id": lambda _rule_id, event: event.user_id,
    "date": lambda _rule_id, event: event.ts.astimezone(UTC).date().isoformat(),
}
_PLACEHOLDER_HELP: Final = "use {rule}, {event}, {event_id}, {user_id}, {date} or {properties.NAME}"


@dataclass(frozen=True, slots=True)
class CompiledKey:
    """A compiled ``dedupe`` template: literal text and placeholder getters, in order."""

    text: str
    parts: tuple[str | _KeyPart, ...]

    def render(self, rule_id: str, event: Event) -> str:
        """Return the idempotency key of ``rule_id`` for ``event``.

        Raises:
            TemplateRenderError: when a ``{properties.NAME}`` is missing or null in the event.
        """
        # A loop rather than a comprehension, which Python 3.11 builds a function for per call.
        rendered: list[str] = []
        for part in self.parts:
            rendered.append(part if isinstance(part, str) else part(rule_id, event))
        return "".join(rendered)


def compile_key(text: str) -> CompiledKey:
    """Compile a rule's ``dedupe`` template.

    Raises:
        SpecError: on an unknown placeholder or unbalanced braces, with the path ``()``.
    """
    if not text:
        raise SpecError((), "a dedupe key must not be empty")
    return CompiledKey(text, tuple(_key_parts(text)))


def _key_parts(text: str) -> Iterator[str | _KeyPart]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise SpecError(
            (), f"unbalanced braces in {quote(text)}: {exc} (write {{{{ for a brace)"
        ) from None
    for literal, name, spec, conversion in parsed:
        if literal:
            yield literal
        if name is None:
            continue
        placeholder = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
        if placeholder != name:
            raise SpecError((), f"unknown placeholder '{{{placeholder}}}' ({_PLACEHOLDER_HELP})")
        yield _placeholder(name)


def _placeholder(name: str) -> _KeyPart:
    getter = _PLACEHOLDERS.get(name)
    if getter is not None:
        return getter
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
