"""Structural checks of a rule file against ``schema.json``, in words marketing can act on.

jsonschema reports what failed in schema terms ("is not valid under any of the given
schemas"); each error is translated here into one message per problem, placed at the key
or value it concerns.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from trigmail.rules.problems import Finding
from trigmail.rules.quickcheck import Check, compile_quick_check
from trigmail.rules.quoting import quote
from trigmail.rules.yamlsource import Path

_TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping (key: value lines)",
    "null": "nothing",
}


@cache
def schema() -> Mapping[str, Any]:
    """Return the rule file JSON Schema shipped in the package."""
    text = resources.files("trigmail.rules").joinpath("schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _quick_check() -> Check:
    """Return the rule schema compiled by :mod:`trigmail.rules.quickcheck`."""
    return compile_quick_check(schema()) or (lambda _document: False)


@cache
def _validator() -> Draft202012Validator:
    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema())


def check_structure(document: Any, validator: Draft202012Validator | None = None) -> list[Finding]:
    """Return one finding per structural problem of a decoded rule file.

    Args:
        document: the decoded YAML.
        validator: another schema's validator (the config file's); the rule schema by default.
    """
    if validator is None and _quick_check()(document):
        # Nearly every file is valid, and jsonschema takes milliseconds to say so: it only
        # runs to explain what the quick check rejected.
        return []
    findings: dict[Finding, None] = {}
    for error in (validator or _validator()).iter_errors(document):
        # Some errors come once per missing key, listing them all: keep each finding once.
        findings.update(dict.fromkeys(_explain(error)))
    return list(findings)


def kind(value: object) -> str:
    """Name the kind of a YAML value for a message: ``text``, ``a list``, ..."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"the number {quote(value)}"
    if isinstance(value, str):
        return f"the text {quote(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "nothing (an empty value)"


def _explain(error: ValidationError) -> list[Finding]:
    explain = _EXPLAINERS.get(str(error.validator), _explain_other)
    return explain(error)


def _path(error: ValidationError) -> Path:
    return tuple(error.absolute_path)


# jsonschema types these attributes as "maybe unset"; on a reported error they are always set.
def _instance(error: ValidationError) -> Any:
    return error.instance


def _expected(error: ValidationError) -> Any:
    return error.validator_value


def _properties(error: ValidationError) -> list[str]:
    subschema = error.schema
    return sorted(subschema.get("properties", {})) if isinstance(subschema, Mapping) else []


def _explain_unknown(error: ValidationError) -> list[Finding]:
    allowed = _properties(error)
    findings = []
    for key in _instance(error):
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
        message = f"unknown key {quote(key)} ({hint})"
        findings.append(Finding((*_path(error), key), message, at_key=True))
    return findings


def _explain_required(error: ValidationError) -> list[Finding]:
    missing = [key for key in _expected(error) if key not in _instance(error)]
    return [Finding(_path(error), f"missing required key {key!r}") for key in missing]


def _explain_type(error: ValidationError) -> list[Finding]:
    return [Finding(_path(error), _type_message(_expected(error), _instance(error)))]


def _type_message(expected: str | Iterable[str], instance: object) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    words = " or ".join(_TYPE_WORDS.get(name, name) for name in names)
    hint = ""
    if "string" in names and isinstance(instance, int | float | bool):
        hint = "; put it in quotes"
    return f"expected {words}, got {kind(instance)}{hint}"


def _explain_any(error: ValidationError) -> list[Finding]:
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    # A branch whose type fits the value is what the author meant: explain its errors only.
    for _, errors in sorted(branches.items()):
        if not any(e.validator == "type" and not e.relative_path for e in errors):
            return [finding for sub in errors for finding in _explain(sub)]
    expected: list[str] = []
    for errors in branches.values():
        for sub in errors:
            if sub.validator == "type" and not sub.relative_path:
                value = _expected(sub)
                expected.extend([value] if isinstance(value, str) else value)
    return [Finding(_path(error), _type_message(expected, _instance(error)))]


def _explain_pattern(error: ValidationError) -> list[Finding]:
    path = _path(error)
    message = f"{quote(_instance(error))} does not match {_expected(error)}"
    if path and path[-1] == "id":
        message = (
            f"{quote(_instance(error))} is not a valid id: use lowercase letters, digits and '-'"
        )
    return [Finding(path, message)]


def _explain_enum(error: ValidationError) -> list[Finding]:
    choices = ", ".join(str(choice) for choice in _expected(error))
    return [Finding(_path(error), f"{quote(_instance(error))} is not one of: {choices}")]


def _explain_size(error: ValidationError) -> list[Finding]:
    limit = _expected(error)
    match error.validator:
        case "maxItems":
            message = f"has {len(_instance(error))} items; at most {limit} are allowed"
        case "minimum":
            message = f"must be at least {limit}"
        case _ if limit == 1:
            message = "must not be empty"
        case _:
            message = f"needs at least {limit} items"
    return [Finding(_path(error), message)]


def _explain_other(error: ValidationError) -> list[Finding]:
    return [Finding(_path(error), error.message)]


_EXPLAINERS: dict[str, Callable[[ValidationError], list[Finding]]] = {
    "additionalProperties": _explain_unknown,
    "required": _explain_required,
    "type": _explain_type,
    "anyOf": _explain_any,
    "oneOf": _explain_any,
    "pattern": _explain_pattern,
    "enum": _explain_enum,
    "minItems": _explain_size,
    "maxItems": _explain_size,
    "minProperties": _explain_size,
    "minLength": _explain_size,
    "minimum": _explain_size,
}
