"""Data of constants and plain paths renders without a budget (``_render_plain``): the same
value, or the same error, as the render under a budget that every other data takes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigmail.errors import TemplateRenderError
from trigmail.events import Event
from trigmail.rules import limits
from trigmail.rules.templating import CompiledData, compile_data

_TS = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


def _event(data: dict[str, Any]) -> Event:
    return Event("evt_1", "x", "u_1", None, _TS, data)


def _budgeted(compiled: CompiledData, event: Event) -> object:
    """The render every data took before: the root under one budget."""
    try:
        return limits.within_budget(compiled.root.render, event.data)
    except TemplateRenderError as exc:
        return (TemplateRenderError, str(exc))


def _rendered(compiled: CompiledData, event: Event) -> object:
    try:
        return compiled.render(event)
    except TemplateRenderError as exc:
        return (TemplateRenderError, str(exc))


_PATHS = st.sampled_from(
    [
        "a",
        "a.b",
        "a.b.c",
        "a[0]",
        "a[-1]",
        "a[2].b",
        "a.items",
        "a.b.keys",
        "user.first_name",
        "properties.n",
        "a['b']",
        "x.y",
    ]
)
_DEFAULTS = st.sampled_from(["'there'", "0", "1.5", "none", "true", "''"])
_STRINGS = st.one_of(
    _PATHS.map(lambda path: "{{ " + path + " }}"),
    st.tuples(_PATHS, _DEFAULTS).map(lambda p: "{{ " + p[0] + " | default(" + p[1] + ") }}"),
    st.sampled_from(["plain text", "", "{{ a.b ~ 'x' }}"]),
)
_VALUES = st.one_of(_STRINGS, st.integers(), st.none(), st.booleans(), st.floats(-9, 9))
_SPECS = st.dictionaries(st.sampled_from(["k1", "k2", "k3", "k4"]), _VALUES, min_size=1)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
_KEYS = st.sampled_from(["a", "b", "c", "0", "items", "keys", "first_name", "n", "user"])
_DATA = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(spec=_SPECS, data=st.dictionaries(_KEYS, _DATA, max_size=4))
def test_plain_data_renders_as_under_a_budget(spec: dict[str, Any], data: dict[str, Any]) -> None:
    compiled = compile_data(spec)
    event = _event(data)
    assert _rendered(compiled, event) == _budgeted(compiled, event)


@pytest.mark.parametrize(
    ("spec", "data"),
    [
        # a default over a value longer than a template may make: over a limit
        ({"x": "{{ a | default('') }}"}, {"a": "y" * (limits.MAX_CHARS + 1)}),
        # at the bound exactly: rendered
        ({"x": "{{ a | default('') }}"}, {"a": "y" * limits.MAX_CHARS}),
        # 60 defaults of 50,000 characters: each twice counted, over the made total
        ({f"k{i}": "{{ a | default('') }}" for i in range(60)}, {"a": "y" * 50_000}),
        # 25 of them: 2.5 M made, within it
        ({f"k{i}": "{{ a | default('') }}" for i in range(25)}, {"a": "y" * 50_000}),
        # a number of more bits than a template may make, behind a default
        ({"x": "{{ a | default(0) }}"}, {"a": 2**9000}),
        # a plain lookup does not check sizes
        ({"x": "{{ a }}"}, {"a": "y" * (limits.MAX_CHARS + 1)}),
        # a value JSON cannot hold, through a lookup
        ({"x": "{{ a }}"}, {"a": {1, 2}}),
        ({"x": "{{ a }}"}, {"a": ({"b": (1, 2)},)}),
        # a missing field: Jinja's error
        ({"x": "{{ a.b }}", "y": "{{ c }}"}, {"a": {"b": 1}}),
        # a dict's method name: to Jinja an attribute, not a missing key
        ({"x": "{{ a.items | default(1) }}"}, {"a": {}}),
        # a string's index
        ({"x": "{{ a[0] }}"}, {"a": "text"}),
        # indexes from the end, inside a list and past its start
        ({"x": "{{ a[-2] }}"}, {"a": [1, 2]}),
        ({"x": "{{ a[-3] }}"}, {"a": [1, 2]}),
        ({"x": "{{ a[-1] | default(0) }}"}, {"a": []}),
    ],
)
def test_plain_data_at_the_bounds(spec: dict[str, Any], data: dict[str, Any]) -> None:
    compiled = compile_data(spec)
    event = _event(data)
    assert _rendered(compiled, event) == _budgeted(compiled, event)


def test_which_data_is_plain() -> None:
    plain = {"a": "{{ a.b }}", "b": "{{ c | default('x') }}", "c": 1, "d": "text"}
    assert compile_data(plain).plain is not None
    assert compile_data({"a": "{{ a ~ 'x' }}"}).plain is None
    assert compile_data({"a": {"b": "{{ a }}"}}).plain is None
    # enough defaults for their steps to reach a read of the CPU clock
    many = {f"k{i}": "{{ a | default(1) }}" for i in range(limits.CLOCK_EVERY)}
    assert compile_data(many).plain is None
    assert compile_data(dict(list(many.items())[1:])).plain is not None


def test_inside_an_open_budget_the_budget_is_charged() -> None:
    compiled = compile_data({"x": "{{ a | default(1) }}"})

    def render(event: Event) -> int:
        compiled.render(event)
        budget = limits._local.budget
        assert budget is not None
        return budget.made

    assert limits.within_budget(render, _event({"a": "abc"})) == 6
