"""YAML that means what marketing wrote, with the line and column of every value.

PyYAML's default (YAML 1.1) resolver turns ``on``, ``off``, ``yes``, ``no`` and ``NO``
(Norway) into booleans, ``9:30`` into the number 570 and ``2026-01-01`` into a date, and it
silently keeps the last of two equal keys. Rules must mean what they say, so this loader
resolves only ``true``/``false`` (any case) as booleans, ``null``/``~``/nothing as null and
plain decimal numbers as numbers; everything else is text. Duplicate keys are reported with
both positions, and the document is turned into plain Python values beside a map from each
key path to where its key and its value start.

Rule files and the config are written by people, not always careful ones: a document is
bounded (docs/security.md). Text longer than :data:`MAX_DOCUMENT_CHARS`, nesting deeper than
:data:`MAX_DEPTH` and more than :data:`MAX_VALUES` values once aliases are expanded (a
400-byte "billion laughs" file expands to a billion) are each one issue at the place the limit
was crossed, found before the work or the memory grows; nothing here recurses deeper than
:data:`MAX_DEPTH`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from trigmail.rules.quoting import quote

Path = tuple[str | int, ...]

# Far above any real rule file or config (the sample rules.d is 24 KB in all, a 1,000-rule
# file about 500 KB) and far below what costs memory: composing 1 MiB of YAML takes ~50 MB.
MAX_DOCUMENT_CHARS: Final = 1 << 20
# Rules nest about ten deep (rules[0].when.all[0].any[1].not.properties.x.in[0]); every
# later stage (JSON Schema, conditions, templates) recurses once or more per level.
MAX_DEPTH: Final = 64
# Values after alias expansion: a 1 MiB file of rules like the samples holds about 26,000.
MAX_VALUES: Final = 100_000

_STR: Final = "tag:yaml.org,2002:str"
_BOOL: Final = "tag:yaml.org,2002:bool"
_NULL: Final = "tag:yaml.org,2002:null"
_INT: Final = "tag:yaml.org,2002:int"
_FLOAT: Final = "tag:yaml.org,2002:float"
_SEQ: Final = "tag:yaml.org,2002:seq"
_MAP: Final = "tag:yaml.org,2002:map"

_BOOL_RE: Final = re.compile(r"^(?:true|false)$", re.IGNORECASE)
_NULL_RE: Final = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT_RE: Final = re.compile(r"^[-+]?[0-9]+$")
_FLOAT_RE: Final = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _Resolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core-schema-like resolution: no yes/no/on/off, no dates, no base 60.

    The parser calls these three methods for every node. BaseResolver's versions also serve
    path resolvers and wildcard resolvers, which this loader has none of; these do the same
    for the implicit resolvers below at a fraction of the cost.
    """

    def descend_resolver(self, current_node: Node | None, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is not ScalarNode:
            return _SEQ if kind is SequenceNode else _MAP
        if implicit[0]:
            for tag, regexp in self.yaml_implicit_resolvers.get(value[:1], ()):
                if regexp.match(value):
                    return str(tag)
        return _STR


_Resolver.add_implicit_resolver(_BOOL, _BOOL_RE, list("tTfF"))
_Resolver.add_implicit_resolver(_NULL, _NULL_RE, ["~", "n", "N", ""])
_Resolver.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
_Resolver.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))


class _PyLoader(
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Resolver
):
    """The pure-Python parser, for installs without libyaml."""

    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Resolver.__init__(self)


_Loader: Any = _PyLoader
if getattr(yaml, "__with_libyaml__", False):
    # libyaml parses many times faster and gives the same nodes and marks.

    from yaml._yaml import CParser

    class _CLoader(CParser, _Resolver):
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _Resolver.__init__(self)

    _Loader = _CLoader


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


# A (line, col) pair, 1-based. Positions are kept as plain tuples and made Marks on request:
# a load holds one per key and value of every file (hundreds of thousands), and the garbage
# collector stops tracking tuples of ints but would walk as many Marks on every full pass.
_Position = tuple[int, int]


@dataclass(frozen=True)
class YamlDocument:
    """A parsed document: plain values plus where each of them was written.

    ``data`` is ``None`` for an empty document or one with a syntax error (then ``issues``
    says where). ``values`` maps a key path to the 1-based (line, column) where its value
    starts, ``keys`` to where its mapping key starts; :meth:`position` reads them.
    """

    data: Any
    values: Mapping[Path, _Position]
    keys: Mapping[Path, _Position]
    issues: tuple[YamlIssue, ...] = ()

    def position(self, path: Path, *, key: bool = False) -> Mark:
        """Return where ``path`` was written, or where its nearest written parent was.

        Args:
            path: the key path.
            key: prefer the position of the mapping key over that of its value.
        """
        probe = path
        while True:
            if key and probe in self.keys:
                return Mark(*self.keys[probe])
            if probe in self.values:
                return Mark(*self.values[probe])
            if not probe:
                return Mark(1, 1)
            probe = probe[:-1]


def _position(node: Node) -> _Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _mark(node: Node) -> Mark:
    return Mark(*_position(node))


class _LimitError(Exception):
    """A bound of the document was crossed: building stops with this one issue."""

    def __init__(self, issue: YamlIssue) -> None:
        super().__init__(issue.message)
        self.issue = issue


class _Builder:
    """Turns a node graph into plain values, recording positions and issues on the way."""

    def __init__(self) -> None:
        self.values: dict[Path, _Position] = {}
        self.keys: dict[Path, _Position] = {}
        self.issues: list[YamlIssue] = []
        # Node ids on the current path: a recursive alias (``&a [*a]``) must not loop forever.
        self._active: set[int] = set()
        # Collections built so far: meeting one again means an alias is being expanded.
        self._built: set[int] = set()
        self._expanded = False
        self._count = 0

    def build(self, node: Node, path: Path) -> Any:
        start = node.start_mark
        self.values.setdefault(path, (start.line + 1, start.column + 1))
        self._count += 1
        if self._count > MAX_VALUES:
            self._limit(node, path, self._too_many())
        if isinstance(node, ScalarNode):
            # Most nodes; a scalar contains nothing, so it cannot be its own ancestor.
            return self._scalar(node, path)
        if len(path) >= MAX_DEPTH:
            self._limit(node, path, f"nested deeper than {MAX_DEPTH} levels; flatten it")
        if id(node) in self._active:
            self._issue(node, path, "an alias refers to itself")
            return None
        if id(node) in self._built:
            self._expanded = True
        self._built.add(id(node))
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _too_many(self) -> str:
        message = f"more than {MAX_VALUES} values"
        if self._expanded:
            message += " once its aliases are expanded (each *alias repeats its &anchor)"
        return message + "; split the file or use fewer aliases"

    def _limit(self, node: Node, path: Path, message: str) -> None:
        # No key path: at this depth it would be longer than the message.
        raise _LimitError(YamlIssue(_mark(node), (), f"the document is too large: {message}"))

    def _issue(self, node: Node, path: Path, message: str) -> None:
        self.issues.append(YamlIssue(_mark(node), path, message))

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        if node.tag != _MAP:
            self._issue(node, path, f"unsupported YAML tag {quote(node.tag)}")
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._issue(key_node, path, _key_message(key_node))
                continue
            # Keys stay exactly as written: `on:` is the text "on", never the boolean true.
            key = str(key_node.value)
            key_path = (*path, key)
            if key in result:
                line, col = self.keys[key_path]
                self._issue(
                    key_node,
                    key_path,
                    f"duplicate key {quote(key)} (first written at line {line}, col {col}); "
                    "keep only one",
                )
                continue
            self.keys[key_path] = _position(key_node)
            result[key] = self.build(value_node, key_path)
        return result

    def _sequence(self, node: SequenceNode, path: Path) -> list[Any]:
        if node.tag != _SEQ:
            self._issue(node, path, f"unsupported YAML tag {quote(node.tag)}")
        return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]

    def _scalar(self, node: Node, path: Path) -> Any:
        text = str(node.value)
        try:
            return _construct(node.tag, text)
        except ValueError:
            self._issue(
                node, path, f"{quote(text)} cannot be read as {node.tag.rsplit(':', 1)[-1]}"
            )
        except KeyError:
            self._issue(node, path, f"unsupported YAML tag {quote(node.tag)}")
        return text


def _key_message(node: Node) -> str:
    if isinstance(node, MappingNode) and node.flow_style:
        # `first_name: {{ user.first_name }}`: YAML reads the braces as a mapping.
        return (
            "'{{' here starts a YAML mapping, not a placeholder: put the whole value in "
            'quotes, e.g. first_name: "{{ user.first_name }}"'
        )
    return "a key must be plain text, not a list or mapping"


def _construct(tag: str, text: str) -> Any:
    """Build a scalar for one of the supported tags (explicit ones such as ``!!int`` too)."""
    if tag == _STR:
        return text
    if tag == _BOOL:
        if not _BOOL_RE.match(text):
            raise ValueError(text)
        return text.lower() == "true"
    if tag == _NULL:
        if not _NULL_RE.match(text):
            raise ValueError(text)
        return None
    if tag == _INT:
        return int(text)
    if tag == _FLOAT:
        lowered = text.lower()
        return float(lowered.replace(".inf", "inf").replace(".nan", "nan"))
    raise KeyError(tag)


def _syntax_issue(exc: yaml.YAMLError, text: str) -> YamlIssue:
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


def load_document(text: str) -> YamlDocument:
    """Parse one YAML document; never raises for bad input, which becomes ``issues``.

    A document beyond the bounds of :data:`MAX_DOCUMENT_CHARS`, :data:`MAX_DEPTH` or
    :data:`MAX_VALUES` gives ``data`` ``None`` and one issue saying which, and where.
    """
    if len(text) > MAX_DOCUMENT_CHARS:
        message = f"the document is too large: {len(text)} characters, over {MAX_DOCUMENT_CHARS}"
        return YamlDocument(None, {}, {}, (YamlIssue(Mark(1, 1), (), message),))
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        return YamlDocument(None, {}, {}, (_syntax_issue(exc, text),))
    except RecursionError:
        # Only the pure-Python composer recurses (libyaml stops at 1,000 levels by itself).
        message = f"the document is too large: nested deeper than {MAX_DEPTH} levels"
        return YamlDocument(None, {}, {}, (YamlIssue(Mark(1, 1), (), message),))
    finally:
        loader.dispose()
    if node is None:
        return YamlDocument(None, {}, {})
    builder = _Builder()
    try:
        data = builder.build(node, ())
    except _LimitError as exc:
        return YamlDocument(None, {}, {}, (exc.issue,))
    return YamlDocument(data, builder.values, builder.keys, tuple(builder.issues))
