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
from dataclasses import dataclass, field
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from trigmail.rules.quoting import quote
from trigmail.rules.yamlerrors import Mark, Path, YamlIssue, syntax_issue

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_CHARS",
    "MAX_VALUES",
    "Mark",
    "Path",
    "YamlDocument",
    "YamlIssue",
    "load_document",
]


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


# A (line, col) pair, 1-based.
_Position = tuple[int, int]

# Positions of key paths this short are kept as the document is built: every rule asks
# where it starts (``rules.3.id``). Deeper ones are looked up in the node graph, composed
# again on the first request: only a document with something to report asks, and a map of
# every value cost a third of loading 500 files, and memory for each value.
_EAGER_DEPTH: Final = 3


@dataclass(frozen=True)
class YamlDocument:
    """A parsed document: plain values, and where each of them was written.

    ``data`` is ``None`` for an empty document or one with a syntax error (then ``issues``
    says where). :meth:`position` tells where a key path was written.
    """

    data: Any
    text: str = ""
    issues: tuple[YamlIssue, ...] = ()
    values: Mapping[Path, _Position] = field(default_factory=dict, repr=False)
    keys: Mapping[Path, _Position] = field(default_factory=dict, repr=False)
    _nodes: list[Node | None] = field(default_factory=list, compare=False, repr=False)

    def position(self, path: Path, *, key: bool = False) -> Mark:
        """Return where ``path`` was written, or where its nearest written parent was.

        Args:
            path: the key path.
            key: prefer the position of the mapping key over that of its value.
        """
        if key and path in self.keys:
            return Mark(*self.keys[path])
        if path in self.values:
            return Mark(*self.values[path])
        node = self._root()
        if node is None:
            return Mark(1, 1)
        key_node: Node | None = None
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            key_node, node = child
        return _mark(key_node if key and key_node is not None else node)

    def _root(self) -> Node | None:
        if self.data is None:
            return None
        if not self._nodes:
            self._nodes.append(_compose(self.text))
        return self._nodes[0]


def _compose(text: str) -> Node | None:
    loader = _Loader(text)
    try:
        return loader.get_single_node()  # type: ignore[no-any-return]
    finally:
        loader.dispose()


def _child(node: Node, part: str | int) -> tuple[Node | None, Node] | None:
    """The key node (for a mapping) and the value node at ``part`` of ``node``, if written."""
    if isinstance(node, MappingNode) and isinstance(part, str):
        for key_node, value_node in node.value:
            # The first of duplicate keys: it is the one whose value was kept.
            if isinstance(key_node, ScalarNode) and str(key_node.value) == part:
                return key_node, value_node
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return None, node.value[part]
    return None


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
    """Turns a node graph into plain values, recording issues on the way."""

    def __init__(self) -> None:
        self.issues: list[YamlIssue] = []
        self.values: dict[Path, _Position] = {}
        self.keys: dict[Path, _Position] = {}
        # The key path being built, as a list: made a tuple only for an issue.
        self._path: list[str | int] = []
        # Node ids on the current path: a recursive alias (``&a [*a]``) must not loop forever.
        self._active: set[int] = set()
        # Collections built so far: meeting one again means an alias is being expanded.
        self._built: set[int] = set()
        self._expanded = False
        self._count = 0

    def build(self, node: Node) -> Any:
        self._count += 1
        if self._count > MAX_VALUES:
            self._limit(node, self._too_many())
        if node.__class__ is ScalarNode:
            # Most nodes; a scalar contains nothing, so it cannot be its own ancestor.
            return node.value if node.tag == _STR else self._scalar(node)
        if len(self._path) >= MAX_DEPTH:
            self._limit(node, f"nested deeper than {MAX_DEPTH} levels; flatten it")
        if id(node) in self._active:
            self._issue(node, "an alias refers to itself")
            return None
        if id(node) in self._built:
            self._expanded = True
        self._built.add(id(node))
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node)
            if isinstance(node, SequenceNode):
                return self._sequence(node)
            return self._scalar(node)
        finally:
            self._active.discard(id(node))

    def _too_many(self) -> str:
        message = f"more than {MAX_VALUES} values"
        if self._expanded:
            message += " once its aliases are expanded (each *alias repeats its &anchor)"
        return message + "; split the file or use fewer aliases"

    def _limit(self, node: Node, message: str) -> None:
        # No key path: at this depth it would be longer than the message.
        raise _LimitError(YamlIssue(_mark(node), (), f"the document is too large: {message}"))

    def _issue(self, node: Node, message: str, *, part: str | None = None) -> None:
        path = (*self._path, part) if part is not None else tuple(self._path)
        self.issues.append(YamlIssue(_mark(node), path, message))

    def _mapping(self, node: MappingNode) -> dict[str, Any]:
        if node.tag != _MAP:
            self._issue(node, f"unsupported YAML tag {quote(node.tag)}")
        result: dict[str, Any] = {}
        path = self._path
        for key_node, value_node in node.value:
            if key_node.__class__ is not ScalarNode:
                self._issue(key_node, _key_message(key_node))
                continue
            # Keys stay exactly as written: `on:` is the text "on", never the boolean true.
            key = str(key_node.value)
            if key in result:
                self._duplicate(node, key_node, key)
                continue
            path.append(key)
            if len(path) <= _EAGER_DEPTH:
                self._record(tuple(path), value_node, key_node)
            result[key] = self.build(value_node)
            path.pop()
        return result

    def _record(self, path: Path, value_node: Node, key_node: Node | None = None) -> None:
        self.values[path] = _position(value_node)
        if key_node is not None:
            self.keys[path] = _position(key_node)

    def _duplicate(self, node: MappingNode, key_node: Node, key: str) -> None:
        # The first key of this name in the mapping: the one whose value was kept.
        written = _child(node, key)
        first = _mark(written[0] if written is not None and written[0] is not None else key_node)
        message = (
            f"duplicate key {quote(key)} (first written at line {first.line}, col {first.col}); "
            "keep only one"
        )
        self._issue(key_node, message, part=key)

    def _sequence(self, node: SequenceNode) -> list[Any]:
        if node.tag != _SEQ:
            self._issue(node, f"unsupported YAML tag {quote(node.tag)}")
        result = []
        path = self._path
        for index, item in enumerate(node.value):
            path.append(index)
            if len(path) <= _EAGER_DEPTH:
                self._record(tuple(path), item)
            result.append(self.build(item))
            path.pop()
        return result

    def _scalar(self, node: Node) -> Any:
        text = str(node.value)
        try:
            return _construct(node.tag, text)
        except ValueError:
            self._issue(node, f"{quote(text)} cannot be read as {node.tag.rsplit(':', 1)[-1]}")
        except KeyError:
            self._issue(node, f"unsupported YAML tag {quote(node.tag)}")
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


def load_document(text: str) -> YamlDocument:
    """Parse one YAML document; never raises for bad input, which becomes ``issues``.

    A document beyond the bounds of :data:`MAX_DOCUMENT_CHARS`, :data:`MAX_DEPTH` or
    :data:`MAX_VALUES` gives ``data`` ``None`` and one issue saying which, and where.
    """
    if len(text) > MAX_DOCUMENT_CHARS:
        message = f"the document is too large: {len(text)} characters, over {MAX_DOCUMENT_CHARS}"
        return YamlDocument(None, text, (YamlIssue(Mark(1, 1), (), message),))
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        return YamlDocument(None, text, (syntax_issue(exc, text),))
    except RecursionError:
        # Only the pure-Python composer recurses (libyaml stops at 1,000 levels by itself).
        message = f"the document is too large: nested deeper than {MAX_DEPTH} levels"
        return YamlDocument(None, text, (YamlIssue(Mark(1, 1), (), message),))
    finally:
        loader.dispose()
    if node is None:
        return YamlDocument(None, text)
    builder = _Builder()
    builder.values[()] = _position(node)
    try:
        data = builder.build(node)
    except _LimitError as exc:
        return YamlDocument(None, text, (exc.issue,))
    return YamlDocument(data, text, tuple(builder.issues), builder.values, builder.keys)
