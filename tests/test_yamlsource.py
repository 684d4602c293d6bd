"""The position-keeping YAML loader: strict booleans, duplicate keys, marks."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from trigmail.rules.yamlsource import Mark, YamlDocument, load_document


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on: x", {"on": "x"}),  # `on` as a key stays the text "on", never true
        ("v: NO", {"v": "NO"}),  # Norway is a country code, not false
        ("v: yes", {"v": "yes"}),  # yes/no/on/off are words
        ("v: off", {"v": "off"}),  # off is a word too
        ("v: TRUE", {"v": True}),  # true/false in any case are booleans
        ("v: False", {"v": False}),  # ...both of them
        ("v: ~", {"v": None}),  # ~ is null
        ("v:", {"v": None}),  # nothing is null
        ("v: 9:30", {"v": "9:30"}),  # no base-60 numbers
        ("v: 2026-01-01", {"v": "2026-01-01"}),  # no dates
        ("v: 010", {"v": 10}),  # no octal surprise
        ("v: 1.5", {"v": 1.5}),  # floats are floats
        ("v: !!str 12", {"v": "12"}),  # explicit tags are honoured
        ("1: a", {"1": "a"}),  # keys are kept as written
    ],
)
def test_scalars_mean_what_they_say(text: str, expected: dict[str, Any]) -> None:
    document = load_document(text)
    assert document.issues == ()
    assert document.data == expected


def test_positions_of_keys_and_values() -> None:
    document = load_document("rules:\n  - id: a\n    on: [x, y]\n")
    assert document.position(("rules", 0, "on"), key=True) == Mark(3, 5)
    assert document.position(("rules", 0, "on")) == Mark(3, 9)
    assert document.position(("rules", 0, "on", 1)) == Mark(3, 13)
    # A path that was never written falls back to its nearest written parent.
    assert document.position(("rules", 0, "send", "template")) == Mark(2, 5)


def test_duplicate_key_names_both_places_and_keeps_the_first() -> None:
    document = load_document("a: 1\nb: 2\na: 3\n")
    assert document.data == {"a": 1, "b": 2}
    [issue] = document.issues
    assert issue.mark == Mark(3, 1)
    assert issue.message == "duplicate key 'a' (first written at line 1, col 1); keep only one"


@pytest.mark.parametrize(
    ("text", "mark", "message"),
    [
        # an unclosed flow mapping: where the parser gave up, and where it began
        (
            "a: {b: 1\nc: 2\n",
            Mark(1, 4),
            "this '{' is not closed by '}' on its line (or a ',' is missing between two items)",
        ),
        # the mistakes marketing makes, in plain words, where to look
        (
            "rules:\n  - id: a\n\ton: x\n",
            Mark(3, 1),
            "a tab character: indent with spaces only, never tabs",
        ),
        (
            "rules:\n  - id: a\n    send:\n    \ttemplate: d\n",
            Mark(4, 5),
            "a tab character: indent with spaces only, never tabs",
        ),
        (
            'rules:\n  - id: q\n    on: "user_signup\n    send: {template: d-q}\n',
            Mark(3, 9),
            'this " is never closed: add the closing " at the end of the value',
        ),
        (
            "rules:\n  - id: q\n    description: Nudge: shoppers\n",
            Mark(3, 23),
            "a second ': ' on one line: put the value in quotes, e.g. "
            'description: "Reminder: your cart"',
        ),
        (
            "rules:\n  - id: q\n     on: x\n",
            Mark(3, 6),
            "this line starts further right (column 6) than the key above it (column 5): "
            "keys of one mapping must line up",
        ),
        (
            "rules:\n  - id: q\n    on: x\n   send: y\n",
            Mark(4, 4),
            "this line starts at column 4, which does not line up with the line above it "
            "(column 5): keys of one mapping, and the '-' of one list, must start in the same "
            "column",
        ),
        (
            "rules:\n  - id: q\n    cancel_on: [a, b\n    on: x\n",
            Mark(3, 16),
            "this '[' is not closed by ']' on its line (or a ',' is missing between two items)",
        ),
        (
            "rules:\n  - id: q\n  -id: r\n",
            Mark(3, 3),
            "a list item needs a space after its '-': write '- '",
        ),
        (
            "rules:\n  - id: q\n    on x\n    send: y\n",
            Mark(3, 5),
            "this line has no ':' after its key: write it as 'key: value'",
        ),
        # two documents in one file
        (
            "a: 1\n---\nb: 2\n",
            Mark(2, 1),
            "a second document ('---'): a file holds one; remove the '---' or split the file",
        ),
    ],
)
def test_syntax_errors_have_positions(text: str, mark: Mark, message: str) -> None:
    document = load_document(text)
    assert document.data is None
    assert [(i.mark, i.message) for i in document.issues] == [(mark, message)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: !!python/object:os.system x", "unsupported YAML tag"),  # no arbitrary objects
        ("a: &x [*x]", "an alias refers to itself"),  # a recursive alias does not loop
        ("a: !!int x", "'x' cannot be read as int"),  # a tag that does not fit its value
        ("? [a]\n: 1", "a key must be plain text"),  # complex keys are refused
    ],
)
def test_odd_yaml_is_an_issue(text: str, message: str) -> None:
    issues = load_document(text).issues
    assert len(issues) == 1
    assert message in issues[0].message


def test_empty_document_has_no_data_and_no_issue() -> None:
    document = load_document("# only a comment\n")
    assert (document.data, document.issues) == (None, ())


def test_an_unquoted_placeholder_is_named() -> None:
    # `{{ user.x }}` unquoted is a mapping inside a mapping: YAML's reading, not a template.
    document = load_document("data:\n  a: {{ user.x }}\n")
    [issue] = document.issues
    assert issue.mark == Mark(2, 7)
    assert issue.message == (
        "'{{' here starts a YAML mapping, not a placeholder: put the whole value in "
        'quotes, e.g. first_name: "{{ user.first_name }}"'
    )


_KEYS = st.sampled_from(["a", "bb", "rules", "send", "on", "x1"])
_TREES = st.recursive(
    st.just("leaf"),
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3)
        | st.dictionaries(_KEYS, inner, min_size=1, max_size=3)
    ),
    max_leaves=25,
)


def _numbered(tree: Any, counter: itertools.count[int]) -> Any:
    """The tree with every leaf a text found nowhere else in the document."""
    if isinstance(tree, dict):
        return {key: _numbered(value, counter) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_numbered(item, counter) for item in tree]
    return f"v{next(counter)}z"


def _paths(data: Any, path: tuple[str | int, ...] = ()) -> Any:
    yield path, data
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for part, value in items:
        yield from _paths(value, (*path, part))


def _text_at(text: str, mark: Mark) -> str:
    """The text from ``mark`` on, after the quote the dumper puts around words such as on."""
    return text.splitlines()[mark.line - 1][mark.col - 1 :].removeprefix("'")


@given(_TREES.map(lambda tree: {"rules": _numbered(tree, itertools.count())}), st.booleans())
@settings(max_examples=150, deadline=None)
def test_every_path_is_found_where_it_is_written(data: dict[str, Any], flow: bool) -> None:
    """Judged on the text: a value's position is where its text starts, a key's where the
    key's does, and a path that is not written falls back to its parent's place."""
    text = yaml.safe_dump(data, default_flow_style=flow, sort_keys=False, width=60)
    document = load_document(text)
    assert document.data == data
    for path, value in _paths(data):
        if isinstance(value, str):
            assert _text_at(text, document.position(path)).startswith(value), (path, text)
            assert document.position((*path, "missing")) == document.position(path)
        if path and isinstance(path[-1], str):
            assert _text_at(text, document.position(path, key=True)).startswith(path[-1])
    _check_fresh_document_agrees(text, document)


def _check_fresh_document_agrees(text: str, document: YamlDocument) -> None:
    """Positions asked of a document in any order (the node graph composed on first use)
    are the ones a fresh document gives."""
    paths = [path for path, _value in _paths(document.data)]
    for path in reversed(paths):
        assert load_document(text).position(path) == document.position(path)
