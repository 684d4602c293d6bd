"""Compiled ``when`` conditions: every operator, missing paths, nesting and spec errors."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigmail.errors import SpecError
from trigmail.events import Event, event_from_object
from trigmail.rules.conditions import compile_condition

READ_AT = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


def make_event(properties: dict[str, Any], user: dict[str, Any] | None = None) -> Event:
    obj = {
        "id": "evt_1",
        "event": "cart_abandoned",
        "user_id": "u_1",
        "user": {"country": "PT", "plan": "free"} if user is None else user,
        "properties": properties,
    }
    return event_from_object(obj, read_at=READ_AT)


HOLDS = [
    # a bare scalar means eq
    ({"properties.v": "PT"}, {"v": "PT"}),
    # a bare list means eq on the whole list
    ({"properties.v": [1, 2]}, {"v": [1, 2]}),
    # an int equals the same float
    ({"properties.v": {"eq": 20}}, {"v": 20.0}),
    # eq null holds for JSON null
    ({"properties.v": {"eq": None}}, {"v": None}),
    # eq true holds for true
    ({"properties.v": True}, {"v": True}),
    # eq compares nested objects by value
    ({"properties.v": {"eq": {"a": [1, "x"]}}}, {"v": {"a": [1.0, "x"]}}),
    # ne holds for a different value
    ({"properties.v": {"ne": "a"}}, {"v": "b"}),
    # ne holds for a value of another type
    ({"properties.v": {"ne": 1}}, {"v": True}),
    # ne holds when the path is missing
    ({"properties.v": {"ne": "a"}}, {}),
    # gt on numbers
    ({"properties.v": {"gt": 20}}, {"v": 20.5}),
    # gte holds on equality
    ({"properties.v": {"gte": 20}}, {"v": 20}),
    # lt on numbers
    ({"properties.v": {"lt": 0}}, {"v": -1}),
    # lte holds on equality across int and float
    ({"properties.v": {"lte": 2.0}}, {"v": 2}),
    # strings compare with strings (ISO dates sort as text)
    ({"properties.v": {"gte": "2026-01-01"}}, {"v": "2026-11-27"}),
    # in a list of strings
    ({"user.country": {"in": ["PT", "ES"]}}, {}),
    # in matches a float against an int member
    ({"properties.v": {"in": [1, 2]}}, {"v": 2.0}),
    # in matches a list member by value
    ({"properties.v": {"in": [[1, 2], "x"]}}, {"v": [1, 2]}),
    # not_in holds for a non-member
    ({"user.country": {"not_in": ["FR"]}}, {}),
    # not_in holds when the path is missing
    ({"properties.v": {"not_in": ["FR"]}}, {}),
    # not_in holds for true against a list holding 1
    ({"properties.v": {"not_in": [1]}}, {"v": True}),
    # a string that spells the number equals it (Redis flat fields carry strings)
    ({"properties.v": 20}, {"v": "20"}),
    # ... whatever its spelling
    ({"properties.v": {"eq": 20}}, {"v": "20.0"}),
    # gte reads a numeric string as its number
    ({"properties.v": {"gte": 20}}, {"v": "30"}),
    # lt with a negative decimal and blanks around it
    ({"properties.v": {"lt": 0}}, {"v": " -0.5 "}),
    # in a list of numbers
    ({"properties.v": {"in": [1, 2]}}, {"v": "2"}),
    # not_in a list of numbers, by value
    ({"properties.v": {"not_in": [1, 2]}}, {"v": "3e0"}),
    # ne against a number holds for a different numeric string
    ({"properties.v": {"ne": 5}}, {"v": "6"}),
    # in a mixed list: the string as itself
    ({"properties.v": {"in": ["x", 1]}}, {"v": "x"}),
    # exists true for a present value
    ({"properties.v": {"exists": True}}, {"v": 0}),
    # exists true for JSON null: null is a value
    ({"properties.v": {"exists": True}}, {"v": None}),
    # exists false for a missing path
    ({"properties.v": {"exists": False}}, {}),
    # contains a substring
    ({"properties.v": {"contains": "shoe"}}, {"v": "red shoes"}),
    # contains a list element
    ({"properties.v": {"contains": "b"}}, {"v": ["a", "b"]}),
    # contains a number in a list, int against float
    ({"properties.v": {"contains": 2}}, {"v": [1, 2.0]}),
    # matches searches anywhere in the string
    ({"properties.v": {"matches": r"@example\.com$"}}, {"v": "ana@example.com"}),
    # several operators on one path must all hold
    ({"properties.v": {"gte": 10, "lt": 100}}, {"v": 50}),
    # a top-level field of the event
    ({"event": "cart_abandoned"}, {}),
    # top-level keys are ANDed
    ({"user.plan": "free", "properties.v": {"gt": 1}}, {"v": 2}),
]


@pytest.mark.parametrize(("spec", "properties"), HOLDS)
def test_condition_holds(spec: dict[str, Any], properties: dict[str, Any]) -> None:
    assert compile_condition(spec).check(make_event(properties)) is None


FAILS = [
    # eq reports the value it saw
    ({"properties.v": {"eq": 20}}, {"v": 19}, "properties.v eq 20 (was 19)"),
    # booleans are not numbers
    ({"properties.v": {"eq": 1}}, {"v": True}, "properties.v eq 1 (was True)"),
    # numbers are not booleans
    ({"properties.v": True}, {"v": 1}, "properties.v eq True (was 1)"),
    # a string that is not a number fails a number comparison, and says so
    ({"properties.v": 20}, {"v": "twenty"}, "properties.v eq 20 (was 'twenty', not a number)"),
    # ne against a number: text that is no number never matches
    ({"properties.v": {"ne": 5}}, {"v": "abc"}, "properties.v ne 5 (was 'abc', not a number)"),
    # not_in a list of numbers: text that is no number never matches
    (
        {"properties.v": {"not_in": [1]}},
        {"v": "x"},
        "properties.v not_in [1] (was 'x', not a number)",
    ),
    # a numeric string is compared as its number
    ({"properties.v": {"gte": 20}}, {"v": "12.5"}, "properties.v gte 20 (was '12.5')"),
    # a string number is not a string operand's number
    ({"properties.v": {"eq": "20"}}, {"v": 20}, "properties.v eq '20' (was 20)"),
    # not a decimal number: float() would take these, the rule does not
    ({"properties.v": {"gt": 0}}, {"v": "inf"}, "properties.v gt 0 (was 'inf', not a number)"),
    # nested booleans are not numbers either
    ({"properties.v": [1]}, {"v": [True]}, "properties.v eq [1] (was [True])"),
    # eq fails on a missing path
    ({"properties.v": "x"}, {}, "properties.v eq 'x' (missing)"),
    # ne fails on an equal value
    ({"properties.v": {"ne": "a"}}, {"v": "a"}, "properties.v ne 'a' (was 'a')"),
    # gt fails on equality
    ({"properties.v": {"gt": 20}}, {"v": 20}, "properties.v gt 20 (was 20)"),
    # gte fails below
    ({"properties.v": {"gte": 20}}, {"v": 12.5}, "properties.v gte 20 (was 12.5)"),
    # lt fails on equality
    ({"properties.v": {"lt": 1}}, {"v": 1}, "properties.v lt 1 (was 1)"),
    # lte fails above
    ({"properties.v": {"lte": 1}}, {"v": 1.5}, "properties.v lte 1 (was 1.5)"),
    # an empty string is not a number
    ({"properties.v": {"gte": 20}}, {"v": ""}, "properties.v gte 20 (was '', not a number)"),
    # a number against a string fails instead of raising
    ({"properties.v": {"lt": "b"}}, {"v": 1}, "properties.v lt 'b' (was 1)"),
    # true is not >= 1
    ({"properties.v": {"gte": 1}}, {"v": True}, "properties.v gte 1 (was True)"),
    # null is not comparable
    ({"properties.v": {"lt": 1}}, {"v": None}, "properties.v lt 1 (was None)"),
    # a list is not comparable
    ({"properties.v": {"gt": 1}}, {"v": [2]}, "properties.v gt 1 (was [2])"),
    # gte fails on a missing path
    ({"properties.v": {"gte": 20}}, {}, "properties.v gte 20 (missing)"),
    # in fails for a non-member
    ({"user.country": {"in": ["PT", "ES"]}}, {}, "user.country in ['PT', 'ES'] (was 'FR')"),
    # in fails on a missing path
    ({"user.zone": {"in": ["PT", "ES"]}}, {}, "user.zone in ['PT', 'ES'] (missing)"),
    # true is not in a list holding 1
    ({"properties.v": {"in": [1]}}, {"v": True}, "properties.v in [1] (was True)"),
    # not_in fails for a member
    ({"properties.v": {"not_in": ["a"]}}, {"v": "a"}, "properties.v not_in ['a'] (was 'a')"),
    # exists true fails on a missing path
    ({"properties.v": {"exists": True}}, {}, "properties.v exists True (missing)"),
    # exists false fails on a present value
    ({"properties.v": {"exists": False}}, {"v": 1}, "properties.v exists False (was 1)"),
    # contains fails on a number value
    ({"properties.v": {"contains": "1"}}, {"v": 10}, "properties.v contains '1' (was 10)"),
    # a number is not a substring
    ({"properties.v": {"contains": 1}}, {"v": "10"}, "properties.v contains 1 (was '10')"),
    # contains looks for elements, not substrings of elements
    ({"properties.v": {"contains": "a"}}, {"v": ["ab"]}, "properties.v contains 'a' (was ['ab'])"),
    # contains fails on a missing path
    ({"properties.v": {"contains": "a"}}, {}, "properties.v contains 'a' (missing)"),
    # matches fails when the pattern is not found
    ({"properties.v": {"matches": "^b"}}, {"v": "abc"}, "properties.v matches '^b' (was 'abc')"),
    # matches fails on a non-string
    ({"properties.v": {"matches": "1"}}, {"v": 1}, "properties.v matches '1' (was 1)"),
    # the failing one of several operators is reported
    ({"properties.v": {"gte": 10, "lt": 100}}, {"v": 100}, "properties.v lt 100 (was 100)"),
    # a path through a scalar is missing
    ({"properties.v.w": 1}, {"v": 3}, "properties.v.w eq 1 (missing)"),
]


@pytest.mark.parametrize(("spec", "properties", "expected"), FAILS)
def test_condition_fails(spec: dict[str, Any], properties: dict[str, Any], expected: str) -> None:
    event = make_event(properties, user={"country": "FR"})
    assert compile_condition(spec).check(event) == expected


def test_failure_description_is_short_for_a_huge_value() -> None:
    failed = compile_condition({"properties.v": "x"}).check(make_event({"v": "y" * 10_000}))
    assert failed is not None
    assert failed.startswith("properties.v eq 'x' (was 'yyy")
    assert len(failed) < 120


NESTED = [
    # all holds when every part holds
    ({"all": [{"user.plan": "free"}, {"user.country": "PT"}]}, None),
    # all reports the first failing part
    (
        {"all": [{"user.plan": "free"}, {"user.country": "ES"}]},
        "user.country eq 'ES' (was 'PT')",
    ),
    # any holds when one part holds
    ({"any": [{"user.plan": "pro"}, {"user.country": "PT"}]}, None),
    # any reports every failing part
    (
        {"any": [{"user.plan": "pro"}, {"properties.v": {"gt": 5}}]},
        "none held: user.plan eq 'pro' (was 'free'); properties.v gt 5 (was 1)",
    ),
    # not holds when its condition fails
    ({"not": {"user.plan": "pro"}}, None),
    # not fails when its condition holds, naming it
    ({"not": {"user.plan": "free"}}, "not (user.plan eq 'free')"),
    # not of a missing path holds
    ({"not": {"user.zone": {"exists": True}}}, None),
    # not of several keys negates their AND
    (
        {"not": {"user.plan": "free", "user.country": "PT"}},
        "not (user.plan eq 'free' and user.country eq 'PT')",
    ),
    # any inside all inside not
    (
        {"not": {"all": [{"any": [{"user.plan": "pro"}, {"properties.v": 1}]}]}},
        "not ((user.plan eq 'pro' or properties.v eq 1))",
    ),
    # combinators ANDed with a path: the any holds, the path does not
    (
        {"any": [{"user.plan": "pro"}, {"properties.v": 1}], "user.country": "ES"},
        "user.country eq 'ES' (was 'PT')",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), NESTED)
def test_nested_conditions(spec: dict[str, Any], expected: str | None) -> None:
    assert compile_condition(spec).check(make_event({"v": 1})) == expected


SPEC_ERRORS = [
    # an unknown operator suggests the closest one
    ({"properties.v": {"gtee": 20}}, ("properties.v", "gtee"), "did you mean 'gte'?"),
    # an operator nothing resembles lists them all
    ({"properties.v": {"zzzz": 1}}, ("properties.v", "zzzz"), "use one of eq, ne"),
    # a regex that does not compile, with re's message
    (
        {"properties.v": {"matches": "(a"}},
        ("properties.v", "matches"),
        "missing ): (a",
    ),
    # matches needs a string
    ({"properties.v": {"matches": 1}}, ("properties.v", "matches"), "regular expression string"),
    # in needs a list
    ({"user.country": {"in": "PT"}}, ("user.country", "in"), "'in' takes a list"),
    # not_in needs a list
    ({"user.country": {"not_in": {"a": 1}}}, ("user.country", "not_in"), "takes a list"),
    # a list member YAML read as a date
    ({"p.d": {"in": ["x", date(2026, 1, 1)]}}, ("p.d", "in", 1), "quote it: '2026-01-01'"),
    # exists needs a boolean
    ({"properties.v": {"exists": "yes"}}, ("properties.v", "exists"), "true or false"),
    # gt needs a number or a string
    ({"properties.v": {"gt": [1]}}, ("properties.v", "gt"), "not a list"),
    # gte against a boolean is refused
    ({"properties.v": {"gte": True}}, ("properties.v", "gte"), "not a boolean"),
    # lte against null is refused
    ({"properties.v": {"lte": None}}, ("properties.v", "lte"), "not null"),
    # contains takes one value
    ({"properties.v": {"contains": ["a"]}}, ("properties.v", "contains"), "not a list"),
    # eq against an unquoted YAML date never matches
    ({"properties.d": date(2026, 1, 1)}, ("properties.d",), "quote it"),
    # an empty any list
    ({"any": []}, ("any",), "an empty 'any' list"),
    # an empty all list
    ({"all": []}, ("all",), "an empty 'all' list"),
    # any needs a list
    ({"any": {"user.plan": "free"}}, ("any",), "'any' takes a list of conditions"),
    # a list item must be a mapping
    ({"all": ["user.plan"]}, ("all", 0), "must be a mapping"),
    # not needs a mapping
    ({"not": [{"user.plan": "free"}]}, ("not",), "must be a mapping"),
    # errors deep inside carry the whole path
    (
        {"any": [{"user.plan": "free"}, {"not": {"properties.v": {"gtee": 1}}}]},
        ("any", 1, "not", "properties.v", "gtee"),
        "did you mean 'gte'?",
    ),
    # an empty condition
    ({}, (), "an empty condition"),
    # a path without operators
    ({"properties.v": {}}, ("properties.v",), "no operator for 'properties.v'"),
    # a path with an empty segment
    ({"properties..v": 1}, ("properties..v",), "not a dotted path"),
    # a key YAML read as a number
    ({1: "x"}, (1,), "must be a dotted path"),
]


@pytest.mark.parametrize(("spec", "path", "fragment"), SPEC_ERRORS)
def test_spec_errors(spec: dict[Any, Any], path: tuple[str | int, ...], fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        compile_condition(spec)
    assert caught.value.path == path
    assert fragment in caught.value.message
    assert str(caught.value) == caught.value.message


def test_a_spec_that_is_not_a_mapping() -> None:
    with pytest.raises(SpecError, match="must be a mapping") as caught:
        compile_condition(["user.plan"])  # type: ignore[arg-type]
    assert caught.value.path == ()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
ORDERED = st.integers() | st.floats() | st.text(max_size=8)
OPERATOR_SPECS = st.one_of(
    st.tuples(st.sampled_from(["eq", "ne"]), JSON),
    st.tuples(st.sampled_from(["gt", "gte", "lt", "lte"]), ORDERED),
    st.tuples(st.sampled_from(["in", "not_in"]), st.lists(JSON, max_size=4)),
    st.tuples(st.just("exists"), st.booleans()),
    st.tuples(st.just("contains"), SCALAR),
    st.tuples(st.just("matches"), st.sampled_from(["", "^a", r"\d+", "(x|y)$"])),
)


@given(
    properties=st.dictionaries(st.sampled_from(["v", "w"]), JSON, max_size=2),
    operator=OPERATOR_SPECS,
    path=st.sampled_from(["properties.v", "properties.v.w", "properties", "user.plan"]),
)
def test_check_never_raises(
    properties: dict[str, Any], operator: tuple[str, Any], path: str
) -> None:
    op, expected = operator
    condition = compile_condition(
        {"any": [{path: {op: expected}}, {"not": {path: {"eq": expected}}}]}
    )
    result = condition.check(make_event(properties))
    assert result is None or isinstance(result, str)


NUMBER_SPECS = st.one_of(
    st.tuples(st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]), st.integers(-50, 50)),
    st.tuples(
        st.sampled_from(["in", "not_in"]), st.lists(st.integers(-5, 5), min_size=1, max_size=4)
    ),
)
NUMBERS = st.integers(-60, 60) | st.floats(-60, 60, allow_nan=False).map(lambda f: round(f, 3))


@given(operator=NUMBER_SPECS, number=NUMBERS)
def test_numeric_strings_and_numbers_decide_alike(operator: tuple[str, Any], number: float) -> None:
    # Events from Redis flat fields carry "50" where the spool carries 50.
    op, expected = operator
    condition = compile_condition({"properties.v": {op: expected}})
    as_number = condition.check(make_event({"v": number})) is None
    assert (condition.check(make_event({"v": repr(number)})) is None) == as_number
    assert (condition.check(make_event({"v": f" {number} "})) is None) == as_number


@given(
    operator=NUMBER_SPECS,
    text=st.text(max_size=6).filter(lambda t: not any(c.isdigit() for c in t)),
)
def test_text_that_is_no_number_never_matches_a_number(
    operator: tuple[str, Any], text: str
) -> None:
    op, expected = operator
    failed = compile_condition({"properties.v": {op: expected}}).check(make_event({"v": text}))
    assert failed is not None
    assert failed.endswith("not a number)")


def _event(value: Any) -> Event:
    return make_event({"x": value})


@pytest.mark.parametrize(
    ("first", "second", "value", "second_holds"),
    [
        # Equal in Python, not in a condition: a leaf compiled for one never serves the other.
        ({"properties.x": {"eq": 1}}, {"properties.x": {"eq": True}}, 1, False),
        ({"properties.x": {"eq": True}}, {"properties.x": {"eq": 1}}, True, False),
        ({"properties.x": {"in": [1]}}, {"properties.x": {"in": [True]}}, 1, False),
        ({"properties.x": {"eq": "1"}}, {"properties.x": {"eq": 1}}, 1, True),
    ],
)
def test_leaves_that_python_calls_equal_are_compiled_apart(
    first: dict[str, Any], second: dict[str, Any], value: Any, second_holds: bool
) -> None:
    compile_condition(first)
    assert (compile_condition(second).check(_event(value)) is None) is second_holds


def test_a_leaf_says_its_operand_as_written_whatever_was_compiled_before() -> None:
    compile_condition({"properties.x": {"gte": 1}})
    assert (
        compile_condition({"properties.x": {"gte": 1.0}}).check(_event(0))
        == "properties.x gte 1.0 (was 0)"
    )
    compile_condition({"properties.x": {"gte": 0.0}})
    assert (
        compile_condition({"properties.x": {"gte": -0.0}}).check(_event(-1))
        == "properties.x gte -0.0 (was -1)"
    )


def test_equal_leaves_of_two_rules_are_one_object() -> None:
    first = compile_condition({"user.country": {"in": ["PT", "ES"]}})
    assert compile_condition({"user.country": {"in": ["PT", "ES"]}}) is first
