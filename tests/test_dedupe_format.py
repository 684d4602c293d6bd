"""A dedupe key renders through one bound ``str.format``: the same key text, or the same
error, as the part-by-part join it replaced (kept here as the reference)."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trigmail.errors import TemplateRenderError
from trigmail.events import MISSING, Event
from trigmail.rules.dedupe import compile_key


def _reference(text: str, rule_id: str, event: Event) -> str:
    """The key as the join of literal text and each placeholder's value rendered it."""
    parts: list[str] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(text):
        parts.append(literal)
        if name is None:
            continue
        if name == "rule":
            parts.append(rule_id)
        elif name == "event":
            parts.append(event.name)
        elif name == "event_id":
            parts.append(event.id)
        elif name == "user_id":
            parts.append(event.user_id)
        elif name == "date":
            parts.append(event.ts.astimezone(UTC).date().isoformat())
        else:
            value = event.lookup(name)
            if value is MISSING or value is None:
                state = "missing" if value is MISSING else "null"
                raise TemplateRenderError(f"dedupe: {name} is {state}")
            parts.append(str(value))
    return "".join(parts)


def _outcome(render: Any, *args: Any) -> object:
    try:
        return render(*args)
    except TemplateRenderError as exc:
        return (TemplateRenderError, str(exc))


_NAMES = ("a", "b", "order_id", "x.y")
_PLACEHOLDERS = st.sampled_from(
    ["{rule}", "{event}", "{event_id}", "{user_id}", "{date}"]
    + [f"{{properties.{name}}}" for name in _NAMES]
)
# Literal text with braces (doubled, as a template writes them), dots, colons, digits.
_LITERALS = st.text(alphabet="ab:.#-0{}", max_size=6).map(
    lambda text: text.replace("{", "{{").replace("}", "}}")
)
_TEMPLATES = st.lists(st.one_of(_PLACEHOLDERS, _LITERALS), min_size=1, max_size=6).map("".join)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from("xy"), inner),
    max_leaves=4,
)
_PROPERTIES = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "order_id", "x"]), _JSON, max_size=4),
    _JSON,
)
_TEXT = st.text(alphabet="u_e1{}: .é", min_size=1, max_size=5)


@settings(max_examples=400, deadline=None)
@given(
    template=_TEMPLATES,
    rule_id=_TEXT,
    event_id=_TEXT,
    user_id=_TEXT,
    name=_TEXT,
    properties=_PROPERTIES,
    offset_h=st.integers(-14, 14),
)
def test_format_renders_as_the_join(
    template: str,
    rule_id: str,
    event_id: str,
    user_id: str,
    name: str,
    properties: Any,
    offset_h: int,
) -> None:
    assume(template)  # an empty key is refused when the rule loads
    # Late evening UTC in a zone ahead of it: the local date is the next day, {date} is not.
    ts = datetime(2026, 11, 27, 23, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=offset_h)))
    event = Event(event_id, name, user_id, None, ts, {"properties": properties})
    compiled = compile_key(template)
    expected = _outcome(_reference, template, rule_id, event)
    assert _outcome(compiled.render, rule_id, event) == expected
