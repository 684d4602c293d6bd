"""The Jinja environment of ``send.data``: immutable, and bounded in time and size.

Jinja's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` already refuses private
attributes and every method that changes a list, dict or set: ``{{ properties.update({...}) }}``
in one rule can no longer change the event the next rule sees. On top of it, each render is
charged against a budget (``rules.limits``): the generated code calls back here on every loop
item, every ``~`` concatenation and every output, operators that can make
huge values (``* ** + %``) are checked before they run, every filter is charged and checked,
and ``str.format`` refuses huge widths. The hooks are added to the template's tree just before
code generation, so what loading learns from parsing is unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from string import Formatter
from typing import Any, Final

from jinja2 import nodes, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from markupsafe import Markup

from trigmail.rules import limits

# Filters the instrumented tree calls: a hook is a filter because the generated code calls a
# filter directly (a call would go through the sandbox), and takes the context because Jinja
# folds constant filters at compile time otherwise, outside any budget.
_ITER: Final = "trigmail_bounded_iter"
_EMIT: Final = "trigmail_bounded_emit"
_VALUE: Final = "trigmail_bounded_value"


@pass_context
def _iter_hook(_context: Context, iterable: Any) -> Any:
    return limits.bounded_iter(iterable)


@pass_context
def _emit_hook(_context: Context, value: Any) -> str:
    return limits.emit(value)


@pass_context
def _value_hook(_context: Context, value: Any) -> Any:
    limits.step()
    return limits.check_value(value)


def _hook(node: nodes.Node, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


def _instrument(tree: nodes.Template) -> None:
    """Put the budget hooks around loop iterables, concatenations and outputs, in place."""
    for loop in tree.find_all(nodes.For):
        loop.iter = _hook(loop.iter, _ITER)
    for output in tree.find_all(nodes.Output):
        output.nodes = [_hook(child, _EMIT) for child in output.nodes]
    # Each concatenation is replaced in its parent, so the parents are walked.
    for parent in list(tree.find_all(nodes.Node)):
        for name in parent.fields:
            value = getattr(parent, name, None)
            if isinstance(value, nodes.Concat):
                setattr(parent, name, _hook(value, _VALUE))
            elif isinstance(value, list):
                setattr(parent, name, [_wrap_concat(item) for item in value])


def _wrap_concat(item: Any) -> Any:
    return _hook(item, _VALUE) if isinstance(item, nodes.Concat) else item


class _BoundedFormat:
    """``str.format`` fields checked for their width and precision before they are padded."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        limits.step()
        limits.check_format_spec(format_spec)
        return Formatter.format_field(self, value, format_spec)  # type: ignore[arg-type]


class _Formatter(_BoundedFormat, SandboxedFormatter):
    pass


class _EscapeFormatter(_BoundedFormat, SandboxedEscapeFormatter):
    pass


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with budgets; a mapping's keys come before its methods.

    Jinja resolves ``properties.items`` to ``dict.items`` before the key ``items``; event data
    is full of such names (``items``, ``values``, ``count``), so the key must win.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters.update({_ITER: _iter_hook, _EMIT: _emit_hook, _VALUE: _value_hook})
        self.globals["range"] = limits.bounded_range
        # lipsum(n) writes n paragraphs of filler: nothing an email needs.
        self.globals.pop("lipsum", None)

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        _instrument(source)
        code: str = super()._generate(source, *args, **kwargs)
        return code

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        limits.step()
        limits.check_str_call(__obj, args, kwargs)
        return limits.check_value(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        limits.step()
        limits.check_binop(operator, left, right)
        return limits.check_value(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        # Jinja's wrapper, with the bounded formatter in place of its own.
        f_self = value.__self__
        is_map = value.__name__ == "format_map"
        formatter: SandboxedFormatter = (
            _EscapeFormatter(self, escape=f_self.escape)
            if isinstance(f_self, Markup)
            else _Formatter(self)
        )

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs = args[0]
                args = ()
            text: str = type(f_self)(formatter.vformat(f_self, args, kwargs))
            return text

        return functools.update_wrapper(bounded_format, value)


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else len(str(value))


def _check_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
    if isinstance(width, int):
        limits.check_length(width)


def _check_indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    text = str(value)
    indent = width if isinstance(width, int) else len(str(width))
    limits.check_length(len(text) + (text.count("\n") + 1) * max(indent, 0))


def _check_format(value: Any, *_: Any, **__: Any) -> None:
    if isinstance(value, str):
        limits.check_printf(value)


def _check_join(value: Any, d: Any = "", *_: Any, **__: Any) -> None:
    limits.check_join(d, value)


def _check_replace(value: Any, old: Any = "", new: Any = "", *_: Any, **__: Any) -> None:
    limits.check_replace(str(value), old, new)


def _check_wordwrap(
    value: Any, width: Any = 79, brk: Any = True, wrap: Any = None, *_: Any, **kw: Any
) -> None:
    wrapstring = kw.get("wrapstring", wrap)
    if isinstance(wrapstring, str):
        limits.check_length(_length(value) * max(len(wrapstring), 1))


def _check_count(value: Any, count: Any = 0, *_: Any, **__: Any) -> None:
    if isinstance(count, int):
        limits.check_length(count)


def _check_tojson(value: Any, indent: Any = None, *_: Any, **__: Any) -> None:
    if isinstance(indent, int) and indent > 16:
        raise limits.RenderLimitError("tojson indent over 16")


# Filters whose arguments can make their result huge: checked before they run.
_FILTER_CHECKS: Final[Mapping[str, Callable[..., None]]] = {
    "center": _check_center,
    "indent": _check_indent,
    "format": _check_format,
    "join": _check_join,
    "replace": _check_replace,
    "wordwrap": _check_wordwrap,
    "batch": _check_count,
    "slice": _check_count,
    "tojson": _check_tojson,
}


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    check = _FILTER_CHECKS.get(name)
    # A filter given the context, eval context or environment first: its value comes second.
    skip = 0 if getattr(func, "jinja_pass_arg", None) is None else 1

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        limits.step()
        if check is not None:
            check(*args[skip:], **kwargs)
        return limits.check_value(func(*args, **kwargs))

    return bounded
