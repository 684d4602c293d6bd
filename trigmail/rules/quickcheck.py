"""A JSON Schema compiled to plain predicates that only answer "certainly valid?".

jsonschema spends milliseconds per rule file walking the schema and resolving ``$ref``\\ s,
and nearly every file it sees is valid. This compiles the keywords the rule schema uses into
closures that return ``True`` only when jsonschema would report no error; on ``False``
jsonschema runs as before and explains the problem, so messages never come from here.

The one guarantee is that a ``True`` is never wrong. Where a keyword's semantics has a corner
this does not reproduce it answers ``False`` (an integral float is not an ``integer`` here;
``enum`` compares scalars of the same type only), which costs time, never correctness.
A schema with a keyword not listed below compiles to ``None``: no quick check at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

Check = Callable[[Any], bool]

# Keywords that only annotate: they never make an instance invalid.
_ANNOTATIONS: Final = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples"}
)


class _UnsupportedError(Exception):
    """Raised when the schema uses something this module does not compile."""


def compile_quick_check(schema: Mapping[str, Any]) -> Check | None:
    """Return a predicate that is ``True`` only for instances valid under ``schema``.

    Returns:
        ``None`` when ``schema`` uses a keyword or form not supported here.
    """
    try:
        return _Compiler(schema).compile(schema)
    except _UnsupportedError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TYPES: Final[Mapping[str, Check]] = {
    "string": lambda value: isinstance(value, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda value: isinstance(value, bool),
    "array": lambda value: isinstance(value, list),
    "object": lambda value: isinstance(value, dict),
    "null": lambda value: value is None,
}


# Keywords about an object's keys, checked together in one pass over the object.
_OBJECT_KEYWORDS: Final = frozenset({"properties", "additionalProperties", "required"})


class _Compiler:
    """Compiles subschemas, each ``$defs`` entry once (a recursive schema works too)."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self._defs: Mapping[str, Any] = root.get("$defs", {})
        self._compiled: dict[str, Check] = {}

    def compile(self, schema: Any) -> Check:
        if isinstance(schema, bool):
            return _always if schema else _never
        if not isinstance(schema, Mapping):
            raise _UnsupportedError(repr(schema))
        checks = [
            self._keyword(keyword, value, schema)
            for keyword, value in schema.items()
            if keyword not in _ANNOTATIONS and keyword not in _OBJECT_KEYWORDS
        ]
        if _OBJECT_KEYWORDS.intersection(schema):
            checks.append(_object(self, schema))
        return _all_of(checks)

    def _keyword(self, keyword: str, value: Any, schema: Mapping[str, Any]) -> Check:
        build = _KEYWORDS.get(keyword)
        if build is None:
            raise _UnsupportedError(keyword)
        return build(self, value, schema)

    def reference(self, ref: Any) -> Check:
        if not isinstance(ref, str) or not ref.startswith("#/$defs/") or ref.count("/") != 2:
            raise _UnsupportedError(f"$ref {ref!r}")
        name = ref.rsplit("/", 1)[1]
        if name not in self._defs:
            raise _UnsupportedError(f"$ref {ref!r}")
        if name not in self._compiled:
            # A placeholder while it compiles, so a definition that refers to itself does
            # not recurse forever; such a reference looks the definition up when it runs.
            self._compiled[name] = _pending
            self._compiled[name] = self.compile(self._defs[name])
        compiled = self._compiled
        if compiled[name] is not _pending:
            return compiled[name]

        def deferred(value: Any) -> bool:
            return compiled[name](value)

        return deferred


_Build = Callable[[_Compiler, Any, Mapping[str, Any]], Check]


def _always(_value: Any) -> bool:
    return True


def _never(_value: Any) -> bool:
    return False


def _pending(_value: Any) -> bool:
    return False


def _all_of(checks: Sequence[Check]) -> Check:
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    frozen = tuple(checks)
    return lambda value: all(check(value) for check in frozen)


def _object(compiler: _Compiler, schema: Mapping[str, Any]) -> Check:
    """Check ``properties``, ``additionalProperties`` and ``required`` in one pass."""
    if "patternProperties" in schema:
        raise _UnsupportedError("patternProperties")
    properties = {key: compiler.compile(sub) for key, sub in schema.get("properties", {}).items()}
    extra = schema.get("additionalProperties", True)
    other = None if extra is True else compiler.compile(extra)
    required = tuple(schema.get("required", ()))

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        if not all(key in value for key in required):
            return False
        for key, item in value.items():
            sub = properties.get(key, other)
            if sub is not None and not sub(item):
                return False
        return True

    return check


def _type(_compiler: _Compiler, names: Any, _schema: Mapping[str, Any]) -> Check:
    names = [names] if isinstance(names, str) else names
    if not all(name in _TYPES for name in names):
        raise _UnsupportedError(f"type {names!r}")
    tests = tuple(_TYPES[name] for name in names)
    if len(tests) == 1:
        return tests[0]
    return lambda value: any(test(value) for test in tests)


def _items(compiler: _Compiler, items: Any, _schema: Mapping[str, Any]) -> Check:
    check = compiler.compile(items)
    return lambda value: not isinstance(value, list) or all(check(item) for item in value)


def _any_of(compiler: _Compiler, branches: Any, _schema: Mapping[str, Any]) -> Check:
    checks = tuple(compiler.compile(branch) for branch in branches)
    return lambda value: any(check(value) for check in checks)


def _one_of(compiler: _Compiler, branches: Any, _schema: Mapping[str, Any]) -> Check:
    checks = tuple(compiler.compile(branch) for branch in branches)
    return lambda value: sum(1 for check in checks if check(value)) == 1


def _enum(_compiler: _Compiler, choices: Any, _schema: Mapping[str, Any]) -> Check:
    if not all(choice is None or isinstance(choice, str | int | float) for choice in choices):
        raise _UnsupportedError("enum of non-scalars")
    # Same type and equal: jsonschema tells true from 1; requiring the same type is stricter.
    allowed = tuple((type(choice), choice) for choice in choices)
    return lambda value: (type(value), value) in allowed


def _pattern(_compiler: _Compiler, pattern: Any, _schema: Mapping[str, Any]) -> Check:
    compiled = re.compile(pattern)
    return lambda value: not isinstance(value, str) or compiled.search(value) is not None


def _ref(compiler: _Compiler, ref: Any, _schema: Mapping[str, Any]) -> Check:
    return compiler.reference(ref)


def _at_least(kind: Check, size: Callable[[Any], Any]) -> _Build:
    def build(_compiler: _Compiler, limit: Any, _schema: Mapping[str, Any]) -> Check:
        return lambda value: not kind(value) or size(value) >= limit

    return build


def _at_most(kind: Check, size: Callable[[Any], Any]) -> _Build:
    def build(_compiler: _Compiler, limit: Any, _schema: Mapping[str, Any]) -> Check:
        return lambda value: not kind(value) or size(value) <= limit

    return build


def _same(value: Any) -> Any:
    return value


_KEYWORDS: Final[Mapping[str, _Build]] = {
    "type": _type,
    "items": _items,
    "anyOf": _any_of,
    "oneOf": _one_of,
    "enum": _enum,
    "pattern": _pattern,
    "$ref": _ref,
    "minLength": _at_least(_TYPES["string"], len),
    "maxLength": _at_most(_TYPES["string"], len),
    "minItems": _at_least(_TYPES["array"], len),
    "maxItems": _at_most(_TYPES["array"], len),
    "minProperties": _at_least(_TYPES["object"], len),
    "maxProperties": _at_most(_TYPES["object"], len),
    "minimum": _at_least(_is_number, _same),
    "maximum": _at_most(_is_number, _same),
}
