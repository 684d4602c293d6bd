"""Template data (``send.data``), default data and dedupe key templates."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.exceptions import TemplateSyntaxError

from trigmail.errors import SpecError, TemplateRenderError
from trigmail.events import Event, event_from_object
from trigmail.rules import limits
from trigmail.rules.dedupe import DEFAULT_DEDUPE, compile_key
from trigmail.rules.jinjastrings import (
    _VARIABLE,
    ENV,
    _analyse_parsed,
    _quick_tokens,
    analyse,
    compile_text,
)
from trigmail.rules.templating import (
    _Lookup,
    _LookupOr,
    compile_data,
    default_data,
)

READ_AT = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


def make_event(**overrides: Any) -> Event:
    obj: dict[str, Any] = {
        "id": "evt_1",
        "event": "cart_abandoned",
        "user_id": "u_123",
        "email": "ana@example.com",
        "ts": "2026-11-27T20:00:00Z",
        "user": {"first_name": "Ana", "timezone": "Europe/Lisbon"},
        "properties": {
            "cart_value": 82.5,
            "cart_url": "https://shop.example/c/9",
            "count": 3,
            "items": [{"sku": "a1", "qty": 2}, {"sku": "b2", "qty": 1}],
            "gift": False,
            "coupon": None,
        },
    }
    obj.update(overrides)
    return event_from_object(obj, read_at=READ_AT)


RENDERS = [
    # one expression keeps a string
    ({"url": "{{ properties.cart_url }}"}, {"url": "https://shop.example/c/9"}),
    # one expression keeps a float
    ({"v": "{{ properties.cart_value }}"}, {"v": 82.5}),
    # one expression keeps an int
    ({"n": "{{ properties.count }}"}, {"n": 3}),
    # one expression keeps a boolean
    ({"g": "{{ properties.gift }}"}, {"g": False}),
    # one expression keeps null
    ({"c": "{{ properties.coupon }}"}, {"c": None}),
    # one expression keeps a list of objects
    ({"i": "{{ properties.items }}"}, {"i": [{"sku": "a1", "qty": 2}, {"sku": "b2", "qty": 1}]}),
    # one expression keeps an object
    ({"u": "{{ user }}"}, {"u": {"first_name": "Ana", "timezone": "Europe/Lisbon"}}),
    # arithmetic keeps the number
    ({"d": "{{ properties.cart_value * 2 }}"}, {"d": 165.0}),
    # filters work, and a tuple comes back as a list
    ({"s": "{{ properties.items | map(attribute='sku') | list }}"}, {"s": ["a1", "b2"]}),
    # item syntax and indexes
    ({"s": "{{ properties['items'][1].sku }}"}, {"s": "b2"}),
    # whitespace control still counts as one expression
    ({"n": "{{- properties.count -}}"}, {"n": 3}),
    # default() fills a missing field despite strict undefined
    ({"c": "{{ properties.code | default('none') }}"}, {"c": "none"}),
    # text around an expression renders to a string
    ({"hi": "Hi {{ user.first_name }}!"}, {"hi": "Hi Ana!"}),
    # a number inside text renders as text
    ({"t": "{{ properties.count }} items"}, {"t": "3 items"}),
    # a space outside the braces makes it text
    ({"t": " {{ properties.count }}"}, {"t": " 3"}),
    # statements render to text
    ({"t": "{% if properties.gift %}gift{% else %}self{% endif %}"}, {"t": "self"}),
    # the event's own fields are in the context
    (
        {"e": "{{ event }}/{{ id }}/{{ user_id }}/{{ email }}/{{ ts }}"},
        {"e": "cart_abandoned/evt_1/u_123/ana@example.com/2026-11-27T20:00:00Z"},
    ),
    # a string without Jinja is kept as it is, braces and all
    ({"t": "{not jinja} 100%"}, {"t": "{not jinja} 100%"}),
    # plain scalars are kept as they are
    ({"a": 1, "b": 2.5, "c": True, "d": None}, {"a": 1, "b": 2.5, "c": True, "d": None}),
    # nested mappings and lists are rendered leaf by leaf
    (
        {"cart": {"lines": ["{{ properties.count }}", {"sku": "{{ properties.items[0].sku }}"}]}},
        {"cart": {"lines": [3, {"sku": "a1"}]}},
    ),
    # a mapping's key wins over the dict method of the same name
    ({"k": "{{ properties.count }}+{{ properties.items | length }}"}, {"k": "3+2"}),
    # an empty data mapping
    ({}, {}),
]


@pytest.mark.parametrize(("spec", "expected"), RENDERS)
def test_render(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    assert compile_data(spec).render(make_event()) == expected


def test_rendered_data_is_a_copy_of_the_event() -> None:
    event = make_event()
    rendered = compile_data({"i": "{{ properties.items }}"}).render(event)
    rendered["i"][0]["sku"] = "changed"
    assert event.properties["items"][0]["sku"] == "a1"


RENDER_ERRORS = [
    # a missing property is named
    ({"cart_url": "{{ properties.url }}"}, "data.cart_url: properties.url is missing"),
    # inside text too
    ({"hi": "Hi {{ user.last_name }}!"}, "data.hi: user.last_name is missing"),
    # the shortest missing prefix is named
    ({"x": "{{ properties.cart.id }}"}, "data.x: properties.cart is missing"),
    # a missing top-level name
    ({"x": "{{ order.id }}"}, "data.x: order is missing"),
    # an attribute of a scalar
    ({"x": "{{ properties.cart_url.host }}"}, "data.x: properties.cart_url.host is missing"),
    # an index past the end of a list
    ({"x": "{{ properties.items[5].sku }}"}, "data.x: properties.items[5] is missing"),
    # the path of a nested leaf is given in full
    ({"a": {"b": ["ok", "{{ properties.nope }}"]}}, "data.a.b[1]: properties.nope is missing"),
    # a loop variable's field falls back to Jinja's message
    (
        {"x": "{% for i in properties.items %}{{ i.name }}{% endfor %}"},
        "data.x: 'dict object' has no attribute 'name'",
    ),
    # the sandbox refuses dunder attributes
    (
        {"x": "{{ ''.__class__.__mro__ }}"},
        "data.x: access to attribute '__class__' of 'str' object is unsafe.",
    ),
    # on event data too
    (
        {"x": "{{ properties.__class__ }}"},
        "data.x: access to attribute '__class__' of 'dict' object is unsafe.",
    ),
    # and inside text
    (
        {"x": "a {{ cycler.__init__.__globals__ }}"},
        "data.x: access to attribute '__init__' of 'type' object is unsafe.",
    ),
    # any other runtime error is a template error too
    ({"x": "{{ properties.count / 0 }}"}, "data.x: ZeroDivisionError: division by zero"),
    # a value JSON cannot hold
    ({"x": "{{ range(3) }}"}, "data.x: the value is a range, not JSON data"),
]


@pytest.mark.parametrize(("spec", "message"), RENDER_ERRORS)
def test_render_errors(spec: dict[str, Any], message: str) -> None:
    template = compile_data(spec)
    with pytest.raises(TemplateRenderError) as caught:
        template.render(make_event())
    assert str(caught.value) == message


def test_missing_properties_object() -> None:
    obj = {"event": "user_signup", "user_id": "u_1", "ts": "2026-11-27T20:00:00Z"}
    event = event_from_object(obj, read_at=READ_AT)
    template = compile_data({"url": "{{ properties.cart_url }}"})
    with pytest.raises(TemplateRenderError, match=r"^data\.url: properties is missing$"):
        template.render(event)


DATA_SPEC_ERRORS = [
    # a syntax error names the leaf
    ({"cart_url": "{{ properties.cart_url "}, ("cart_url",), "Jinja syntax error"),
    # in a list, by index
    ({"items": ["a", "b", "{% if %}"]}, ("items", 2), "Expected an expression"),
    # in a nested mapping
    ({"a": {"b": "{{ x | }}"}}, ("a", "b"), "Jinja syntax error"),
    # an unknown filter is caught at compile time
    ({"a": "{{ x | nosuchfilter }}"}, ("a",), "No filter named 'nosuchfilter'"),
    # a value YAML read as a date
    ({"day": date(2026, 1, 1)}, ("day",), "not JSON data; quote it"),
    # a key that is not a string
    ({1: "x"}, ("1",), "keys must be strings"),
]


@pytest.mark.parametrize(("spec", "path", "fragment"), DATA_SPEC_ERRORS)
def test_data_spec_errors(spec: dict[Any, Any], path: tuple[str | int, ...], fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        compile_data(spec)
    assert caught.value.path == path
    assert fragment in caught.value.message


def test_data_spec_must_be_a_mapping() -> None:
    with pytest.raises(SpecError, match="data must be a mapping") as caught:
        compile_data(["x"])  # type: ignore[arg-type]
    assert caught.value.path == ()


def test_template_fields() -> None:
    spec = {
        "a": "{{ properties.cart_url }} {{ user.first_name }}",
        "b": ["{{ properties.items[0].sku }}", "{{ properties.cart_url | upper }}"],
        "c": "{% for i in properties.items %}{{ i.sku }}{{ loop.index }}{% endfor %}",
    }
    assert compile_data(spec).fields == (
        "properties.cart_url",
        "user.first_name",
        "properties.items[0].sku",
        "properties.items",
    )


DEFAULT_DATA = [
    # user and properties merged
    ({"first_name": "Ana"}, {"cart_value": 1}, {"first_name": "Ana", "cart_value": 1}),
    # on a clash the property wins
    ({"plan": "free"}, {"plan": "pro"}, {"plan": "pro"}),
    # neither present
    ({}, {}, {}),
]


@pytest.mark.parametrize(("user", "properties", "expected"), DEFAULT_DATA)
def test_default_data(
    user: dict[str, Any], properties: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert default_data(make_event(user=user, properties=properties)) == expected


KEYS = [
    # the default key
    (DEFAULT_DEDUPE, {}, "cart-recovery:evt_1"),
    # rule, user and UTC date
    ("{rule}:{user_id}:{date}", {}, "cart-recovery:u_123:2026-11-27"),
    # the event name
    ("{event}", {}, "cart_abandoned"),
    # the date is the UTC date, not the local one
    ("{date}", {"ts": "2026-11-28T01:30:00+02:00"}, "2026-11-27"),
    # a property rendered with str()
    ("{rule}:{properties.cart_id}", {"properties": {"cart_id": "c9"}}, "cart-recovery:c9"),
    # a float keeps its decimal point
    ("{properties.v}", {"properties": {"v": 20.0}}, "20.0"),
    # an int stays an int
    ("{properties.v}", {"properties": {"v": 20}}, "20"),
    # a dotted path under properties
    ("{properties.cart.id}", {"properties": {"cart": {"id": 7}}}, "7"),
    # doubled braces are literal braces
    ("{{x}}-{rule}", {}, "{x}-cart-recovery"),
    # a key without placeholders
    ("welcome", {}, "welcome"),
]


@pytest.mark.parametrize(("text", "overrides", "expected"), KEYS)
def test_key_render(text: str, overrides: dict[str, Any], expected: str) -> None:
    assert compile_key(text).render("cart-recovery", make_event(**overrides)) == expected


HELP = "(use {rule}, {event}, {event_id}, {user_id}, {date} or {properties.NAME})"
KEY_SPEC_ERRORS = [
    # an unknown name
    ("{rule}:{foo}", f"unknown placeholder '{{foo}}' {HELP}"),
    # user fields are not placeholders
    ("{user.email}", f"unknown placeholder '{{user.email}}' {HELP}"),
    # properties needs a name
    ("{properties}", f"unknown placeholder '{{properties}}' {HELP}"),
    # an empty segment in the path
    ("{properties.a..b}", f"unknown placeholder '{{properties.a..b}}' {HELP}"),
    # an empty placeholder
    ("{}", f"unknown placeholder '{{}}' {HELP}"),
    # format specs are not supported
    ("{date:%Y}", f"unknown placeholder '{{date:%Y}}' {HELP}"),
    # conversions are not supported
    ("{rule!r}", f"unknown placeholder '{{rule!r}}' {HELP}"),
    # an unclosed brace
    (
        "{rule",
        "unbalanced braces in '{rule': expected '}' before end of string (write {{ for a brace)",
    ),
    # a lone closing brace
    ("rule}", "unbalanced braces in 'rule}': Single '}' encountered in format string"),
    # an empty key
    ("", "a dedupe key must not be empty"),
]


@pytest.mark.parametrize(("text", "message"), KEY_SPEC_ERRORS)
def test_key_spec_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        compile_key(text)
    assert caught.value.path == ()
    assert caught.value.message.startswith(message)


KEY_RENDER_ERRORS = [
    # a missing property
    ({"other": 1}, "dedupe: properties.order_id is missing"),
    # a null property would merge unrelated keys
    ({"order_id": None}, "dedupe: properties.order_id is null"),
]


@pytest.mark.parametrize(("properties", "message"), KEY_RENDER_ERRORS)
def test_key_render_errors(properties: dict[str, Any], message: str) -> None:
    key = compile_key("{rule}:{properties.order_id}")
    with pytest.raises(TemplateRenderError) as caught:
        key.render("r", make_event(properties=properties))
    assert str(caught.value) == message


# --- lazy compilation, the plain-path fast path, shared analysis ---------------------------


def test_loading_parses_without_generating_code() -> None:
    # A string no other test writes, so that nothing has compiled it yet.
    text = "Lazy {{ user.first_name }} {{ properties.count + 41 }}"
    before = compile_text.cache_info()
    template = compile_data({"t": text})
    assert compile_text.cache_info().misses == before.misses
    assert template.render(make_event()) == {"t": "Lazy Ana 44"}
    assert compile_text.cache_info().misses == before.misses + 1
    template.render(make_event())
    assert compile_text.cache_info().misses == before.misses + 1


def _jinja_value(text: str, event: Event) -> Any:
    """Render ``text`` with Jinja, compiled at once, as the loader did before it was lazy."""
    if analyse(text).single:
        expression = ENV.compile_expression(text.strip("{}- "), undefined_to_none=False)
        return expression(event.data)
    return ENV.from_string(text).render(event.data)


@pytest.mark.parametrize(("spec", "expected"), RENDERS)
def test_lazy_render_equals_eager_jinja(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    event = make_event()
    for key, text in spec.items():
        if isinstance(text, str) and "{{" in text:
            rendered = compile_data({key: text}).render(event)[key]
            assert rendered == _jinja_value(text, event)
            assert rendered == expected[key]


PLAIN_PATHS = [
    # a string
    "{{ properties.cart_url }}",
    # a float, an int, a boolean, null
    "{{ properties.cart_value }}",
    "{{ properties.count }}",
    "{{ properties.gift }}",
    "{{ properties.coupon }}",
    # a list of objects and an object
    "{{ properties.items }}",
    "{{ user }}",
    # item syntax and indexes
    "{{ properties['items'][1].sku }}",
    # a key that is also a dict method
    "{{ properties.items }}",
    # no spaces
    "{{properties.count}}",
    # a top-level field
    "{{ event }}",
]

PLAIN_PATH_ERRORS = [
    # a missing property
    "{{ properties.url }}",
    # a missing parent
    "{{ properties.cart.id }}",
    # a missing top-level name
    "{{ order.id }}",
    # an attribute of a string: Jinja finds str.upper, which is not JSON data
    "{{ properties.cart_url.upper }}",
    # a dict method under a name the mapping does not hold
    "{{ properties.keys }}",
    # an index past the end
    "{{ properties.items[5].sku }}",
    # an index into a mapping
    "{{ properties[0] }}",
    # an unsafe attribute
    "{{ properties.__class__ }}",
]


def _lookup_node(text: str) -> Any:
    node = compile_data({"v": text}).root.items[0][1]
    assert isinstance(node, _Lookup), text
    return node


@pytest.mark.parametrize("text", PLAIN_PATHS)
def test_plain_path_renders_as_jinja_does(text: str) -> None:
    data = make_event().data
    node = _lookup_node(text)
    assert node.render(data) == node.jinja.render(data) == _jinja_value(text, make_event())


@pytest.mark.parametrize("text", PLAIN_PATH_ERRORS)
def test_plain_path_fails_as_jinja_does(text: str) -> None:
    # The same error, message and all, as Jinja's rendering of the same string.
    data = make_event().data
    node = _lookup_node(text)
    with pytest.raises(TemplateRenderError) as jinja_error:
        node.jinja.render(data)
    with pytest.raises(TemplateRenderError) as fast_error:
        node.render(data)
    assert str(fast_error.value) == str(jinja_error.value)


# A path with a constant default: read without Jinja where Jinja's answer is known.
DEFAULTED_PATHS = [
    "{{ user.first_name | default('there') }}",
    "{{user.first_name|default('there')}}",
    "{{ properties.count | default(0) }}",
    # null is a value: the default is for what is missing
    "{{ properties.coupon | default('none') }}",
    # a key that is also a dict method, then one that is only a method
    "{{ properties.items | default('') }}",
    "{{ properties.keys | default('x') }}",
    "{{ properties['items'][1].sku | default('x') }}",
    "{{ properties['items'][5].sku | default('x') }}",
    "{{ properties.missing.deeper | default(1.5) }}",
    "{{ nothing.at.all | default(none) }}",
    "{{ properties.cart_url.upper | default('x') }}",
    "{{ properties.__class__ | default('x') }}",
    "{{ properties.missing.__class__ | default('x') }}",
    "{{ properties.missing._undefined_name | default('x') }}",
    "{{ properties.missing[0].sku | default(false) }}",
]

DEFAULTED_EVENTS = [
    {},
    {"user": {}},
    {"user": {"first_name": None}},
    {"user": {"first_name": ["a", {"b": 1}]}},
    {"properties": {"keys": 1, "count": "3", "big": "x" * 100_001}},
    {"properties": {"missing": {"deeper": "here", "__class__": 2, "_undefined_name": 3}}},
]


def _outcome(render: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("value", render())
    except TemplateRenderError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("text", DEFAULTED_PATHS)
@pytest.mark.parametrize("overrides", DEFAULTED_EVENTS)
def test_defaulted_path_renders_as_jinja_does(text: str, overrides: dict[str, Any]) -> None:
    event = make_event(**overrides)
    compiled = compile_data({"v": text})
    node = compiled.root.items[0][1]
    assert isinstance(node, _LookupOr), text
    fast = _outcome(lambda: compiled.render(event)["v"])
    with limits.budget():
        jinja = _outcome(lambda: node.jinja.render(event.data))
    assert fast == jinja


@pytest.mark.parametrize(
    "text",
    [
        "{{ user.first_name | default('there', true) }}",
        "{{ user.first_name | default(properties.name) }}",
        "{{ user.first_name | default(['a']) }}",
        "{{ user.first_name | upper | default('x') }}",
        "{{ range | default('x') }}",
    ],
)
def test_other_defaults_render_with_jinja(text: str) -> None:
    assert not isinstance(compile_data({"v": text}).root.items[0][1], _LookupOr)


def test_defaulted_path_is_charged_as_under_jinja() -> None:
    event = make_event(properties={"big": "x" * 100_001})
    with pytest.raises(TemplateRenderError, match="over a limit"):
        compile_data({"v": "{{ properties.big | default('') }}"}).render(event)


def test_plain_path_value_is_a_copy() -> None:
    event = make_event()
    rendered = compile_data({"u": "{{ user }}"}).render(event)
    rendered["u"]["first_name"] = "changed"
    assert event.user["first_name"] == "Ana"


@pytest.mark.parametrize(
    "text",
    [
        "{{ user.first_name }}",
        "{{ properties.items }}",
        "{{properties.a.b.c}}",
        # Jinja's own names and constants are not event paths
        "{{ range }}",
        "{{ loop.index }}",
        "{{ none }}",
        "{{ true }}",
        "{{ not.x }}",
        "{{ x.if }}",
        # a negative index is an expression, not a key
        "{{ properties.items[-1].qty }}",
    ],
)
def test_plain_path_analysis_equals_parsing(text: str) -> None:
    _assert_analysed_as_parsed(text)


def _assert_analysed_as_parsed(text: str) -> None:
    """``analyse`` gives what a fresh parse of ``text`` gives, or fails as the parse does."""
    try:
        parsed = _analyse_parsed(text)
    except TemplateSyntaxError:
        with pytest.raises(TemplateSyntaxError):
            analyse(text)
        return
    assert analyse(text) == parsed, text


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # only the literal text differs: one parse serves both
        ("Hi {{ user.first_name }} (1)", "Hi {{ user.first_name }} (2)"),
        # whitespace inside the braces is not part of the shape
        ("{{ a }}!", "{{a}}?"),
        # literal text on one side only: not one expression any more
        ("{{ properties.count }}", "{{ properties.count }} items"),
        # a different expression
        ("Hi {{ user.first_name }}", "Hi {{ user.last_name }}"),
    ],
)
def test_shape_shared_analysis_equals_parsing(first: str, second: str) -> None:
    for text in (first, second, first):
        assert analyse(text) == _analyse_parsed(text)


def test_unknown_filter_in_a_branch_fails_at_render_as_before() -> None:
    # Jinja only rejects an unknown filter inside `if` when it runs; loading still accepts it.
    template = compile_data({"x": "{% if properties.gift %}{{ 1 | nosuch }}{% endif %}ok"})
    assert template.render(make_event()) == {"x": "ok"}
    with pytest.raises(TemplateRenderError, match="No filter named 'nosuch'"):
        template.render(make_event(properties={"gift": True}))


def test_codegen_errors_are_still_raised_at_load() -> None:
    with pytest.raises(SpecError, match="block 'b' defined twice"):
        compile_data({"x": "{% block b %}{% endblock %}{% block b %}{% endblock %}"})


def test_first_renders_from_many_threads_agree() -> None:
    # Strings nothing has compiled yet, rendered first by several threads at once.
    spec = {
        f"k{i}": f"{{{{ properties.count * {i} }}}} threads {{{{ user.first_name }}}}"
        for i in range(20)
    }
    spec["path"] = "{{ properties.items[0] }}"
    spec["native"] = "{{ properties.count + 1000 }}"
    template = compile_data(spec)
    expected: dict[str, Any] = {f"k{i}": f"{3 * i} threads Ana" for i in range(20)}
    expected |= {"path": {"sku": "a1", "qty": 2}, "native": 1003}
    threads = 8
    barrier = threading.Barrier(threads)
    event = make_event()

    def render() -> dict[str, Any]:
        barrier.wait()
        return template.render(event)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda _: render(), range(threads)))
    assert results == [expected] * threads


# Literal runs and expressions that put the quick shape's split and Jinja's lexer at odds:
# quotes left open, braces in the text, whitespace control, comments, a final newline.
_LITERALS = ("", "x", " ", "\n", "'", '"', "-", "{", "}", "{#", "#}", "%}")
_INNERS = (
    " a ",
    "b.c",
    "- a ",
    " a -",
    "+a",
    " 'q ",
    ' "x ',
    " a|default('y') ",
    "",
    " 'q' ",
    "a }",
)


def _same_shape_analyses_agree(text: str, other_literal: str) -> None:
    shape = _quick_tokens(text)
    if shape is None:
        return
    parts = _VARIABLE.split(text)
    other = "".join(
        "{{" + part + "}}" if index % 2 else other_literal if part else ""
        for index, part in enumerate(parts)
    )
    assert _quick_tokens(other) == shape
    for candidate in (text, other, text):
        _assert_analysed_as_parsed(candidate)


def test_strings_of_one_shape_analyse_alike() -> None:
    """Whatever text a shape is first learned from, another string of it analyses as parsing
    it would: its literal runs are swapped for other text (empty ones stay empty). Every
    string of one expression between two literal runs, in both orders."""
    for before, inner, after in itertools.product(_LITERALS, _INNERS, _LITERALS):
        text = before + "{{" + inner + "}}" + after
        _same_shape_analyses_agree(text, "z")
        _same_shape_analyses_agree(_VARIABLE.sub(lambda m: "{{" + m[1] + "}}", text), "z z")


@given(
    st.tuples(
        st.sampled_from(_LITERALS),
        st.lists(st.tuples(st.sampled_from(_INNERS), st.sampled_from(_LITERALS)), max_size=4),
    ).map(lambda parts: parts[0] + "".join("{{" + i + "}}" + after for i, after in parts[1])),
    st.sampled_from(["z", "Zz 9"]),
)
@settings(max_examples=300, deadline=None)
def test_longer_strings_of_one_shape_analyse_alike(text: str, other_literal: str) -> None:
    _same_shape_analyses_agree(text, other_literal)
