"""Template data (``send.data``), checked once per rule (dedupe keys: ``rules.dedupe``).

Data strings are Jinja over the event's data (``event``, ``id``, ``user_id``, ``email``, ``ts``,
``user``, ``properties``, and any other top-level field), rendered in an immutable sandbox
(``rules.sandbox``: no template can change the event) with strict undefined: a reference to a
missing field raises :class:`TemplateRenderError`, never yields an email with a blank in it.
Each send's data renders within one budget of time and size (``rules.limits``); a render past
it raises :class:`TemplateRenderError` too. A string that is exactly one expression
(``"{{ properties.items }}"``) keeps the value's JSON type; other strings render to text.
Strings without ``{{`` or ``{%`` are kept as they are, as are numbers, booleans and ``null``.

Loading only parses the Jinja strings (syntax errors and the fields read are known then);
Jinja's code generation, most of a string's cost, waits for its first render and is shared
by every rule that writes the same string. A string that is exactly a path
(``{{ properties.cart_url }}``) is read without Jinja whenever the path is there; a data of
only such strings and constants, without a budget either (``rules.plaindata``).

Without ``send.data`` the template data is the event's ``user`` and ``properties`` merged; on a
name in both, the property wins, being the more specific to this event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from jinja2 import Template
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Undefined

from trigmail.errors import SpecError, TemplateRenderError
from trigmail.rules import limits
from trigmail.rules.jinjastrings import (
    ChainedUndefined,
    Field,
    analyse,
    compile_expression,
    compile_text,
)
from trigmail.rules.plaindata import PlainItem, json_value, render_plain
from trigmail.rules.quoting import cut, quote

if TYPE_CHECKING:
    from trigmail.events import Event

Path = tuple[str | int, ...]

_T = TypeVar("_T")


@dataclass
class _Found:
    """What compiling one ``send.data`` learns on the way: fields read, risks, templates."""

    fields: list[Field] = field(default_factory=list)
    risks: list[tuple[Path, str]] = field(default_factory=list)
    templates: int = 0


class _Node(Protocol):
    def render(self, data: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class _Static:
    value: Any

    def render(self, data: Mapping[str, Any]) -> Any:
        return self.value


class _Once(Generic[_T]):
    """A value built from a key on first use, then kept.

    Building is idempotent (the builders are pure, cached functions of the source text), so
    threads that race on the first render each build an equal value and any of them may win:
    no lock is needed, and a render never waits for another.
    """

    __slots__ = ("_build", "_key", "_value")

    def __init__(self, build: Callable[[str], _T], key: str) -> None:
        self._build = build
        self._key = key
        self._value: _T | None = None

    def get(self) -> _T:
        value = self._value
        if value is None:
            value = self._value = self._build(self._key)
        return value


@dataclass(frozen=True, slots=True)
class _Text:
    template: _Once[Template]
    where: str
    fields: tuple[Field, ...]

    def render(self, data: Mapping[str, Any]) -> Any:
        try:
            return limits.within_budget(self._render, data)
        # Rule authors write these: whatever they raise (a missing field, a sandbox refusal,
        # a division by zero) must set this one event aside, never stop the daemon.
        except Exception as exc:
            raise _render_error(self.where, self.fields, data, exc) from None

    def _render(self, data: Mapping[str, Any]) -> Any:
        limits.start_clock()  # before a first render's compile, as it always counted
        template = self.template.get()
        return limits.check_value(template.render(data))


@dataclass(frozen=True, slots=True)
class _Native:
    expression: _Once[TemplateExpression]
    where: str
    fields: tuple[Field, ...]

    def render(self, data: Mapping[str, Any]) -> Any:
        try:
            value = limits.within_budget(self._value, data)
            if isinstance(value, Undefined):
                # Raises the UndefinedError or SecurityError the value stands for.
                str(value)
            return json_value(value, self.where)
        except TemplateRenderError:
            raise
        except Exception as exc:
            raise _render_error(self.where, self.fields, data, exc) from None

    def _value(self, data: Mapping[str, Any]) -> Any:
        limits.start_clock()  # before a first render's compile, as it always counted
        expression = self.expression.get()
        return limits.check_value(expression(data))


@dataclass(frozen=True, slots=True)
class _Lookup:
    """``{{ properties.cart.id }}``: a plain path, read without Jinja when it is all there.

    Where every step is a key present in a mapping (or an index inside a list), Jinja (with
    the sandbox of ``rules.sandbox``) would read exactly those items, so the result is the same. Any
    other case (a missing key, an attribute of a string, an unsafe name) goes to ``jinja``,
    which gives Jinja's value or Jinja's error, message and all.
    """

    path: Field
    jinja: _Native

    def render(self, data: Mapping[str, Any]) -> Any:
        value: Any = data
        for part in self.path:
            if not _holds(value, part):
                return self.jinja.render(data)
            value = value[part]
        return json_value(value, self.jinja.where)


@dataclass(frozen=True, slots=True)
class _LookupOr:
    """``{{ user.first_name | default('there') }}``, read without Jinja as :class:`_Lookup` is:
    the value when the path is all there, the constant where a dict lacks a key that is none
    of its attributes (to Jinja, an undefined value); the filter's step and the two checks of
    its value are charged as under Jinja. Any other case goes to ``jinja``."""

    path: Field
    fallback: object
    jinja: _Native

    def render(self, data: Mapping[str, Any]) -> Any:
        value: Any = data
        for index, part in enumerate(self.path):
            if _holds(value, part):
                value = value[part]
            elif type(value) is dict and _undefined_from(self.path[index:], top=index == 0):
                value = self.fallback
                break
            else:
                return self.jinja.render(data)
        try:
            limits.step()
            limits.check_value(limits.check_value(value))  # the filter's, then the expression's
        except limits.RenderLimitError as exc:
            raise _render_error(self.jinja.where, self.jinja.fields, data, exc) from None
        return json_value(value, self.jinja.where)


def _undefined_from(rest: Field, *, top: bool) -> bool:
    # Jinja reads an attribute before a missing key (of a dict below the top), and from the
    # undefined value an attribute it has; names that are neither give an undefined value.
    if not top and isinstance(rest[0], str) and hasattr(dict, rest[0]):
        return False
    return not any(isinstance(part, str) and hasattr(ChainedUndefined, part) for part in rest)


@dataclass(frozen=True, slots=True)
class _Dict:
    items: tuple[tuple[str, _Node], ...]

    def render(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return {key: node.render(data) for key, node in self.items}


@dataclass(frozen=True, slots=True)
class _List:
    items: tuple[_Node, ...]

    def render(self, data: Mapping[str, Any]) -> list[Any]:
        return [node.render(data) for node in self.items]


@dataclass(frozen=True, slots=True)
class CompiledData:
    """A compiled ``send.data``.

    ``fields`` are the event paths its expressions read; ``risks`` what in a string (at its
    path) may make a render slow or huge on some event: ``validate`` warns about them.
    """

    root: _Dict
    fields: tuple[str, ...]
    risks: tuple[tuple[Path, str], ...] = ()
    #: The root's items when each is a constant or a plain path (most data): see plaindata.
    plain: tuple[PlainItem, ...] | None = None

    def render(self, event: Event) -> dict[str, Any]:
        """Return the template data for ``event``.

        Raises:
            TemplateRenderError: naming the data key and the missing field or unsafe access.
        """
        if self.plain is not None and not limits.budget_open():
            rendered = render_plain(self.plain, event.data)
            if rendered is not None:
                return rendered
        # One budget for all the strings of one send (docs/security.md).
        return limits.within_budget(self.root.render, event.data)


def _plain_items(root: _Dict) -> tuple[PlainItem, ...] | None:
    """The root's items for ``plaindata.render_plain``, or ``None`` when a string needs
    Jinja or there are enough defaults for their steps to reach a read of the CPU clock."""
    items: list[PlainItem] = []
    for key, node in root.items:
        if isinstance(node, _Static):
            items.append((key, None, node.value, None, ""))
        elif isinstance(node, _Lookup):
            items.append((key, node.path, None, None, node.jinja.where))
        elif isinstance(node, _LookupOr):
            path = node.path
            gives = tuple(_undefined_from(path[i:], top=i == 0) for i in range(len(path)))
            items.append((key, path, node.fallback, gives, node.jinja.where))
        else:
            return None
    if sum(defaults is not None for *_, defaults, _ in items) >= limits.CLOCK_EVERY:
        return None
    return tuple(items)


def compile_data(spec: Mapping[str, Any]) -> CompiledData:
    """Compile a rule's ``send.data``: every Jinja string is parsed now, compiled on first use.

    Raises:
        SpecError: on a Jinja syntax error or a value JSON cannot hold, with its path.
    """
    found = _Found()
    root = _compile_dict(spec, (), found)
    names = dict.fromkeys(_field_name(field) for field in found.fields)
    return CompiledData(root, tuple(names), tuple(found.risks), _plain_items(root))


def default_data(event: Event) -> dict[str, Any]:
    """Return the template data of a rule without ``data``: ``user`` and ``properties`` merged.

    A name in both takes the property's value.
    """
    return {**event.user, **event.properties}


def _compile_value(value: object, path: Path, found: _Found) -> _Node:
    if isinstance(value, str):
        return _compile_string(value, path, found)
    if isinstance(value, Mapping):
        return _compile_dict(value, path, found)
    if isinstance(value, list):
        return _List(tuple(_compile_value(v, (*path, i), found) for i, v in enumerate(value)))
    if value is None or isinstance(value, bool | int | float):
        return _Static(value)
    raise SpecError(path, f"a {type(value).__name__} is not JSON data; quote it to keep it as text")


def _compile_dict(spec: object, path: Path, found: _Found) -> _Dict:
    if not isinstance(spec, Mapping):
        raise SpecError(path, f"data must be a mapping, not a {type(spec).__name__}")
    items = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise SpecError((*path, str(key)), f"data keys must be strings, not {quote(key)}")
        items.append((key, _compile_value(value, (*path, key), found)))
    return _Dict(tuple(items))


def _compile_string(text: str, path: Path, found: _Found) -> _Node:
    if "{{" not in text and "{%" not in text:
        return _Static(text)
    found.templates += 1
    if found.templates > limits.MAX_TEMPLATES:
        message = f"more than {limits.MAX_TEMPLATES} templated strings in one data"
        raise SpecError(path, message)
    if len(text) > limits.MAX_TEMPLATE_CHARS:
        raise SpecError(
            path,
            f"a template of {len(text)} characters, over {limits.MAX_TEMPLATE_CHARS}: the "
            "email's layout belongs in the SendGrid template, the data only fills it",
        )
    try:
        analysis = analyse(text)
    except TemplateSyntaxError as exc:
        raise SpecError(path, f"Jinja syntax error: {exc.message} (line {exc.lineno})") from None
    # Jinja's parser and Python's compiler recurse once or more per nested bracket.
    except (RecursionError, MemoryError, SyntaxError) as exc:
        message = f"the template nests too deeply to be read ({type(exc).__name__})"
        raise SpecError(path, message) from None
    found.fields.extend(analysis.fields)
    found.risks.extend((path, risk) for risk in analysis.risks)
    where = _where(path)
    if not analysis.single:
        return _Text(_Once(compile_text, text), where, analysis.fields)
    native = _Native(_Once(compile_expression, text), where, analysis.fields)
    if analysis.fallback is not None:
        return _LookupOr(*analysis.fallback, native)
    return native if analysis.lookup is None else _Lookup(analysis.lookup, native)


def _render_error(
    where: str, fields: tuple[Field, ...], data: Mapping[str, Any], exc: Exception
) -> TemplateRenderError:
    if isinstance(exc, UndefinedError) and not isinstance(exc, SecurityError):
        for field in fields:
            missing = _missing_prefix(data, field)
            if missing is not None:
                return TemplateRenderError(f"{where}: {_field_name(missing)} is missing")
    if isinstance(exc, limits.RenderLimitError):
        return TemplateRenderError(f"{where}: over a limit: {exc}")
    message = exc.message if isinstance(exc, UndefinedError | SecurityError) else None
    return TemplateRenderError(f"{where}: {message or f'{type(exc).__name__}: {cut(str(exc))}'}")


def _missing_prefix(data: Mapping[str, Any], field: Field) -> Field | None:
    """Return the shortest prefix of ``field`` that ``data`` does not hold, or ``None``."""
    value: Any = data
    for depth, part in enumerate(field, start=1):
        if not _holds(value, part):
            return field[:depth]
        value = value[part]
    return None


def _holds(container: Any, part: str | int) -> bool:
    if type(container) is dict or isinstance(container, Mapping):
        return part in container
    return (
        isinstance(container, list)
        and isinstance(part, int)
        and -len(container) <= part < len(container)
    )


def _field_name(field: Field) -> str:
    return "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" if index else part
        for index, part in enumerate(field)
    )


def _where(path: Path) -> str:
    return _field_name(("data", *path))
