"""Every problem of a rule's conditions and data in one run, not only the first.

Compiling a ``when`` or a ``data`` mapping stops at its first mistake (a compiler raises), so a
rule with three misspelt operators took three runs of ``validate`` to fix. When the build found
a problem in such a region, the region is compiled again one entry at a time: each entry's own
first mistake is a problem of its own. Valid rules never get here, so loading costs nothing
more; the messages are the compilers' own.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from trigmail.errors import SpecError
from trigmail.rules.conditions import compile_condition
from trigmail.rules.problems import Finding
from trigmail.rules.templating import compile_data
from trigmail.rules.yamlsource import Path

# The keys whose value one compiler reads whole, and stops in at the first mistake.
_REGIONS: Final = ("when", "data")
_NO_FILTER = re.compile(r"No filter named '([^']+)'")
_NO_TEST = re.compile(r"No test named '([^']+)'")


def every_problem(spec: Any, base: Path, findings: Sequence[Finding]) -> list[Finding]:
    """Return ``findings`` plus the problems the build's first ones hid, each once.

    Args:
        spec: the rule's (or cap's) mapping as written.
        base: its path in the file (``("rules", 0)``).
        findings: what building it found.
    """
    regions: dict[Path, None] = {}
    for finding in findings:
        relative = finding.path[len(base) :] if finding.path[: len(base)] == base else ()
        for index, part in enumerate(relative):
            if part in _REGIONS:
                regions[relative[: index + 1]] = None
                break
    found = dict.fromkeys(reworded(f) for f in findings)
    for region in regions:
        value = _at(spec, region)
        scan = _condition_problems if region[-1] == "when" else _data_problems
        for path, message in scan(value, ()):
            found.setdefault(reworded(Finding((*base, *region, *path), message)), None)
    return list(found)


def _at(spec: Any, path: Path) -> Any:
    for part in path:
        if isinstance(part, int) and isinstance(spec, list) and 0 <= part < len(spec):
            spec = spec[part]
        elif isinstance(part, str) and isinstance(spec, Mapping):
            spec = spec.get(part)
        else:
            return None
    return spec


def _condition_problems(spec: Any, prefix: Path) -> Iterator[tuple[Path, str]]:
    if not isinstance(spec, Mapping) or (len(spec) <= 1 and not _nested(spec)):
        yield from _compiled(compile_condition, spec, prefix)
        return
    for key, value in spec.items():
        if key in ("all", "any") and isinstance(value, list) and value:
            for index, item in enumerate(value):
                yield from _condition_problems(item, (*prefix, key, index))
        elif key == "not" and isinstance(value, Mapping):
            yield from _condition_problems(value, (*prefix, key))
        elif isinstance(value, Mapping) and len(value) > 1:
            # Several operators on one path: each may be wrong on its own.
            for op, arg in value.items():
                yield from _compiled(compile_condition, {key: {op: arg}}, prefix)
        else:
            yield from _compiled(compile_condition, {key: value}, prefix)


def _nested(spec: Mapping[str, Any]) -> bool:
    return any(
        key in ("all", "any", "not") or (isinstance(value, Mapping) and len(value) > 1)
        for key, value in spec.items()
    )


def _data_problems(spec: Any, prefix: Path) -> Iterator[tuple[Path, str]]:
    if not isinstance(spec, Mapping) or len(spec) <= 1:
        yield from _compiled(compile_data, spec, prefix)
        return
    for key, value in spec.items():
        if isinstance(value, Mapping) and len(value) > 1:
            for inner, problem in _data_problems(value, ()):
                yield (*prefix, key, *inner), problem
        else:
            yield from _compiled(compile_data, {key: value}, prefix)


def _compiled(compile_: Any, spec: Any, prefix: Path) -> Iterator[tuple[Path, str]]:
    try:
        compile_(spec)
    except SpecError as exc:
        yield (*prefix, *exc.path), exc.message


# Jinja's complaints about braces, in the words of the usual mistake.
_JINJA_WORDS: Final = (
    ("Jinja syntax error: unexpected '}'", "a '{{' is closed by a single '}': write '}}'"),
    (
        "Jinja syntax error: unexpected end of template",
        "a '{{' or '{%' is never closed: end it with '}}' or '%}'",
    ),
)


def reworded(finding: Finding) -> Finding:
    """Jinja's own words for an unknown filter or test, with a "did you mean"."""
    message = finding.message
    for start, words in _JINJA_WORDS:
        if message.startswith(start):
            return Finding(finding.path, words, finding.severity, finding.at_key)
    for pattern, names, what in (
        (_NO_FILTER, _filter_names(), "filter"),
        (_NO_TEST, _test_names(), "test"),
    ):
        match = pattern.search(message)
        if match is None:
            continue
        name = match.group(1)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known {what}s: {', '.join(names)}"
        message = f"unknown {what} {name!r} in this template ({hint})"
        return Finding(finding.path, message, finding.severity, finding.at_key)
    return finding


def _filter_names() -> list[str]:
    from trigmail.rules.jinjastrings import ENV

    return sorted(name for name in ENV.filters if not name.startswith("_"))


def _test_names() -> list[str]:
    from trigmail.rules.jinjastrings import ENV

    return sorted(name for name in ENV.tests if not name.startswith("_"))


# The keys of an email: written beside `send:` instead of under it, they leave `send` empty.
_SEND_KEYS: Final = frozenset({"template", "data", "category", "asm_group", "from", "reply_to"})


def misindented(data: Any, findings: Sequence[Finding]) -> list[Finding]:
    """One finding for keys of an email written beside an empty ``send:``, not three.

    ``send:`` followed by ``template:`` at the same indentation is an empty ``send`` and an
    unknown key ``template`` (did you mean 'max_late'?) to the schema; to the author it is one
    line not indented far enough.
    """
    moved: dict[Path, list[str]] = {}
    for finding in findings:
        parent, key = finding.path[:-1], finding.path[-1] if finding.path else None
        if not (finding.message.startswith("unknown key") and key in _SEND_KEYS):
            continue
        owner = _at(data, parent)
        if isinstance(owner, Mapping) and "send" in owner and owner["send"] is None:
            moved.setdefault(parent, []).append(str(key))
    if not moved:
        return list(findings)
    kept = [
        f
        for f in findings
        if not (f.path[:-1] in moved and f.path[-1] in moved[f.path[:-1]])
        and not (f.path[-1:] == ("send",) and f.path[:-1] in moved)
    ]
    for parent, keys in moved.items():
        names = " and ".join(repr(k) for k in keys)
        message = (
            f"{names} {'is' if len(keys) == 1 else 'are'} not indented under 'send:', so "
            f"'send' is empty: indent {'it' if len(keys) == 1 else 'them'} two spaces further "
            "than 'send'"
        )
        kept.append(Finding((*parent, keys[0]), message, at_key=True))
    return kept
