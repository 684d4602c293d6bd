"""What is wrong in a YAML text, in the words of the mistake that usually causes it.

PyYAML says "mapping values are not allowed in this context" for a value holding ": " and for
a line indented too far alike, and "found character '\\t'" for a tab; marketing needs to hear
which mistake it is, and where to look. :func:`syntax_issue` turns the parser's error into one
:class:`YamlIssue` at the place to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    """A 1-based line and column."""

    line: int
    col: int


@dataclass(frozen=True)
class YamlIssue:
    """Something wrong in the YAML itself: a syntax error, a duplicate key, an odd tag."""

    mark: Mark
    path: Path
    message: str


def syntax_issue(exc: yaml.YAMLError, text: str) -> YamlIssue:
    """The parser's error as one issue, in plain words where the mistake is a common one."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = Mark(mark.line + 1, mark.column + 1) if mark is not None else Mark(1, 1)
    problem = str(getattr(exc, "problem", None) or exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    opened = None if context_mark is None else Mark(context_mark.line + 1, context_mark.column + 1)
    plain = plain_syntax_issue(problem, str(context or ""), where, opened, text.splitlines())
    if plain is not None:
        return plain
    if context and opened is not None and opened.line != where.line:
        context = f"{context} at line {opened.line}"
    detail = f"{problem} ({context})" if context else problem
    return YamlIssue(where, (), f"YAML syntax error: {detail}")


def _indent(line: str) -> int:
    """Where the line's first key starts: after its indentation and any ``- `` marks."""
    column = len(line) - len(line.lstrip(" "))
    while line[column : column + 2] == "- ":
        column += 2
        column += len(line[column:]) - len(line[column:].lstrip(" "))
    return column


def _line(lines: list[str], number: int) -> str:
    return lines[number - 1] if 0 < number <= len(lines) else ""


def _previous_content(lines: list[str], number: int) -> str:
    for index in range(number - 2, -1, -1):
        if lines[index].strip() and not lines[index].lstrip().startswith("#"):
            return lines[index]
    return ""


@dataclass(frozen=True)
class _Complaint:
    """What the parser said, and the text it said it about."""

    problem: str
    context: str
    where: Mark
    opened: Mark | None
    lines: list[str]

    @property
    def line(self) -> str:
        return _line(self.lines, self.where.line)

    @property
    def above(self) -> str:
        return _previous_content(self.lines, self.where.line)


def _tab(c: _Complaint) -> YamlIssue | None:
    line = c.line
    if "tab" not in c.problem and line[c.where.col - 1 : c.where.col] != "\t":
        return None
    tab = line.find("\t")
    at = Mark(c.where.line, tab + 1) if tab >= 0 else c.where
    return YamlIssue(at, (), "a tab character: indent with spaces only, never tabs")


def _unclosed_quote(c: _Complaint) -> YamlIssue | None:
    if "quoted scalar" not in c.context or c.opened is None:
        return None
    char = _line(c.lines, c.opened.line)[c.opened.col - 1 : c.opened.col] or "quote"
    message = f"this {char} is never closed: add the closing {char} at the end of the value"
    return YamlIssue(c.opened, (), message)


def _unclosed_flow(c: _Complaint) -> YamlIssue | None:
    for name, (left, right) in (("flow mapping", ("{", "}")), ("flow sequence", ("[", "]"))):
        if name in c.context and c.opened is not None:
            return YamlIssue(
                c.opened,
                (),
                f"this {left!r} is not closed by {right!r} on its line (or a ',' is missing "
                "between two items)",
            )
    return None


def _colon(c: _Complaint) -> YamlIssue | None:
    if not c.problem.startswith("mapping values are not allowed"):
        return None
    line, above = c.line, c.above
    if above and _indent(line) > _indent(above) and not above.rstrip().endswith(":"):
        return YamlIssue(
            Mark(c.where.line, _indent(line) + 1),
            (),
            f"this line starts further right (column {_indent(line) + 1}) than the key "
            f"above it (column {_indent(above) + 1}): keys of one mapping must line up",
        )
    message = (
        "a second ': ' on one line: put the value in quotes, e.g. "
        'description: "Reminder: your cart"'
    )
    return YamlIssue(c.where, (), message)


def _second_document(c: _Complaint) -> YamlIssue | None:
    if "another document" not in c.problem:
        return None
    message = "a second document ('---'): a file holds one; remove the '---' or split the file"
    return YamlIssue(c.where, (), message)


def _no_colon(c: _Complaint) -> YamlIssue | None:
    if not c.problem.startswith("could not find expected ':'") or c.opened is None:
        return None
    return YamlIssue(c.opened, (), "this line has no ':' after its key: write it as 'key: value'")


def _misaligned(c: _Complaint) -> YamlIssue | None:
    if "expected '-' indicator" not in c.problem and "expected <block end>" not in c.problem:
        return None
    line = c.line
    stripped = line.lstrip(" ")
    if stripped.startswith("-") and not stripped.startswith(("- ", "--")):
        return YamlIssue(c.where, (), "a list item needs a space after its '-': write '- '")
    return YamlIssue(
        Mark(c.where.line, _indent(line) + 1),
        (),
        f"this line starts at column {_indent(line) + 1}, which does not line up with the "
        f"line above it (column {_indent(c.above) + 1}): keys of one mapping, and the '-' "
        "of one list, must start in the same column",
    )


_PLAIN_WORDS: Final = (
    _tab,
    _unclosed_quote,
    _unclosed_flow,
    _colon,
    _second_document,
    _no_colon,
    _misaligned,
)


def plain_syntax_issue(
    problem: str, context: str, where: Mark, opened: Mark | None, lines: list[str]
) -> YamlIssue | None:
    """The parser's complaint in the words of the mistake that usually causes it, or ``None``.

    PyYAML says "mapping values are not allowed in this context" for a value holding ": " and
    for a line indented too far alike; marketing needs to hear which, and where to look.
    """
    complaint = _Complaint(problem, context, where, opened, lines)
    for words in _PLAIN_WORDS:
        issue = words(complaint)
        if issue is not None:
            return issue
    return None
