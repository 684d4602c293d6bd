"""The quick structural check: never says valid where jsonschema finds an error."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from trigmail.rules.quickcheck import compile_quick_check
from trigmail.rules.schema import schema
from trigmail.rules.yamlsource import load_document

FIXTURES = Path(__file__).parent / "fixtures" / "rules"
VALIDATOR = Draft202012Validator(schema())
QUICK = compile_quick_check(schema())

# Values that break one keyword or another: types, empties, out-of-range numbers, odd keys.
ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1.0,
    2.5,
    "",
    "x",
    "Bad Id",
    [],
    [""],
    ["a"] * 11,
    {},
    {"nope": 1},
    {"email": "a@b.c", "extra": 1},
    "skip",
    "resend",
]


def _documents() -> list[Any]:
    found = []
    for path in sorted(FIXTURES.rglob("*.yaml")):
        data = load_document(path.read_text()).data
        if data is not None:
            found.append(data)
    return found


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += _paths(item, (*prefix, index))
    return paths


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


def _replace(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    mutated = copy.deepcopy(document)
    parent = mutated
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return mutated


def test_the_rule_schema_compiles() -> None:
    assert QUICK is not None


@pytest.mark.parametrize("document", _documents())
def test_fixture_answers_agree_with_jsonschema(document: Any) -> None:
    assert QUICK is not None
    assert QUICK(document) == VALIDATOR.is_valid(document)


def test_mutated_documents_are_never_wrongly_valid() -> None:
    # Every value of every fixture replaced, one at a time, by each odd value; and keys added.
    assert QUICK is not None
    rng = random.Random(7)
    checked = 0
    for document in _documents():
        for path in _paths(document):
            for value in ODD_VALUES:
                mutated = _replace(document, path, value)
                if QUICK(mutated):
                    assert VALIDATOR.is_valid(mutated), (path, value)
                checked += 1
            if isinstance(_get(document, path), dict):
                extra = _replace(document, (*path, f"k{rng.randrange(9)}"), 1)
                if QUICK(extra):
                    assert VALIDATOR.is_valid(extra), path
    assert checked > 1000


UNSUPPORTED = [
    # a keyword not implemented
    {"type": "string", "format": "email"},
    # a remote reference
    {"$ref": "https://example.com/schema.json"},
    # a reference to nothing
    {"$ref": "#/$defs/missing"},
    # pattern properties next to additionalProperties
    {"type": "object", "patternProperties": {"^x": {}}, "additionalProperties": False},
    # an enum of objects
    {"enum": [{"a": 1}]},
]


@pytest.mark.parametrize("unsupported", UNSUPPORTED)
def test_unsupported_schemas_compile_to_none(unsupported: dict[str, Any]) -> None:
    assert compile_quick_check(unsupported) is None


CASES = [
    # an integral float is not taken for an integer (jsonschema would; asking it costs time)
    ({"type": "integer"}, 1.0, False),
    # booleans are not numbers
    ({"type": "number"}, True, False),
    ({"minimum": 1}, 0, False),
    # keywords about another type do not apply
    ({"minLength": 3}, 5, True),
    # enum tells true from 1
    ({"enum": [1]}, True, False),
    ({"enum": ["skip", "resend"]}, "skip", True),
    # oneOf needs exactly one branch
    ({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, 3, False),
    # a definition that refers to itself
    (
        {
            "$defs": {"tree": {"type": "array", "items": {"$ref": "#/$defs/tree"}}},
            "$ref": "#/$defs/tree",
        },
        [[[]], []],
        True,
    ),
    (
        {
            "$defs": {"tree": {"type": "array", "items": {"$ref": "#/$defs/tree"}}},
            "$ref": "#/$defs/tree",
        },
        [[[1]]],
        False,
    ),
]


@pytest.mark.parametrize(("subschema", "instance", "expected"), CASES)
def test_keyword_cases(subschema: dict[str, Any], instance: Any, expected: bool) -> None:
    check = compile_quick_check(subschema)
    assert check is not None
    assert check(instance) is expected
    if expected:
        assert Draft202012Validator(subschema).is_valid(instance)
