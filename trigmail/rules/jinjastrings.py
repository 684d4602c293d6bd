"""The Jinja side of ``send.data``: the sandbox, what loading learns of a string, compiling.

Loading a rule only needs to know whether each Jinja string is valid, which event fields it
reads, and whether it is one expression (its value keeps its JSON type) or a plain path such
as ``{{ properties.cart_url }}`` (read without Jinja). :func:`analyse` finds that out by
parsing, never by generating Python code: code generation is most of Jinja's cost (about
1 ms a string) and waits for the first render (:func:`compile_text`,
:func:`compile_expression`). Everything here is a pure function of the text, so it is cached
by text; parsing is cached by the template's shape too, which is the same for strings that
differ only in their literal text (``Hi {{ user.first_name }} (rule 7)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from jinja2 import ChainableUndefined, StrictUndefined, Template, nodes
from jinja2.environment import TemplateExpression
from jinja2.exceptions import TemplateSyntaxError

from trigmail.rules.sandbox import BoundedSandbox

Field = tuple[str | int, ...]

# Enough for every distinct string of a large rule set; beyond it only speed suffers.
_CACHE_SIZE: Final = 8192


# Names Jinja itself provides inside templates: never fields of the event.
_TEMPLATE_NAMES: Final = frozenset({"loop", "self", "caller", "varargs", "kwargs"})

# Autoescape is off: the output is JSON template data, which SendGrid escapes itself.


class ChainedUndefined(ChainableUndefined, StrictUndefined):
    """A missing field: an error wherever it is used as a value (never an email with a blank
    in it), but a path through it stays undefined, so a ``default`` at its end works whatever
    part is missing: ``user.first_name | default('there')`` with no ``user`` at all."""

    __slots__ = ()


ENV: Final = BoundedSandbox(undefined=ChainedUndefined, autoescape=False)


@dataclass(frozen=True, slots=True)
class Analysis:
    """What loading needs to know of a Jinja string.

    ``fields`` are the event paths it reads, in order; ``single`` tells a string that is
    exactly one expression; ``lookup`` is the path of one that is only a path, else ``None``;
    ``risks`` say what in it may cost a lot on some event (``validate`` warns about them).
    ``fallback`` is the path and the constant of one that is only a path with a constant
    default (``{{ a.b | default('x') }}``), else ``None``.
    """

    fields: tuple[Field, ...]
    single: bool
    lookup: Field | None
    risks: tuple[str, ...] = ()
    fallback: tuple[Field, object] | None = None


def analyse(text: str) -> Analysis:
    """Parse ``text`` (code generation waits for the first render) and say what it reads.

    Raises:
        TemplateSyntaxError: whatever Jinja's parser or code generator would raise.
    """
    path = _plain_path(text)
    if path is not None:
        return Analysis((path,), True, path)
    return _analyse_text(text)


@lru_cache(maxsize=_CACHE_SIZE)
def compile_text(source: str) -> Template:
    """Compile a template rendering to text; shared by all rules writing the same string."""
    return ENV.from_string(source)


@lru_cache(maxsize=_CACHE_SIZE)
def compile_expression(source: str) -> TemplateExpression:
    """Compile a one-expression template whose result keeps its type; shared likewise."""
    expression = _single_expression(ENV.parse(source))
    if expression is None:
        raise ValueError(f"not a single expression: {source!r}")
    # What Environment.compile_expression does, on the parsed node rather than on text
    # inside its own delimiters; the raw value is kept so that an Undefined can be reported.
    body = [nodes.Assign(nodes.Name("result", "store"), expression, lineno=1)]
    template = ENV.from_string(nodes.Template(body, lineno=1))
    return TemplateExpression(template, undefined_to_none=False)


# `{{ a.b.c }}` with ASCII names and spaces: Jinja's lexer and parser can only read it as a
# chain of attributes of the name `a`, provided `a` is not one of the words below.
_PLAIN_PATH: Final = re.compile(r"\{\{ *([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*) *\}\}", re.ASCII)
_NOT_A_NAME: Final = frozenset(
    {"true", "false", "none", "True", "False", "None", "not", "and", "or", "in", "is", "if", "else"}
)


def _plain_path(text: str) -> Field | None:
    """Return the path of a string that is exactly ``{{ a.b.c }}``, without parsing it."""
    match = _PLAIN_PATH.fullmatch(text)
    if match is None:
        return None
    path = tuple(match.group(1).split("."))
    head = path[0]
    if head in _NOT_A_NAME or head in _TEMPLATE_NAMES or head in ENV.globals:
        return None
    return path


def _analyse_text(text: str) -> Analysis:
    quick = _quick_tokens(text)
    if quick is not None:
        return _analyse_shape(_Shape(quick, text))
    try:
        shape = _Shape(_tokens(text), text)
    except TemplateSyntaxError:
        # Let the parser raise, for the very error and message it always gave.
        return _analyse_parsed(text)
    return _analyse_shape(shape)


# `{{ … }}` holding no brace. Between two of them, text with no brace at all is template
# data, whatever it says, so Jinja's lexer splits such a string exactly where this does.
_VARIABLE: Final = re.compile(r"\{\{([^{}]*)\}\}")


def _quick_tokens(text: str) -> tuple[str | bool, ...] | None:
    """A shape for strings of ``{{ … }}`` and plain text only, found without Jinja's lexer.

    The expressions are kept as written and each run of literal text as whether it is empty,
    so equal shapes lex to equal tokens. Anything the split might see differently from the
    lexer gives ``None``: a brace in the text (tags and comments among them), whitespace
    control (``{{-``), a final newline (Jinja drops it, which may empty the text before it).
    A quote left open inside an expression makes the string invalid whatever follows, and
    invalid strings are never cached, so it cannot share a shape with a valid one.
    """
    if text.endswith(("\n", "\r")):
        return None
    parts = _VARIABLE.split(text)
    # "{{" first: never the first of the lexer's tokens, which are pairs.
    shape: list[str | bool] = ["{{"]
    for index, part in enumerate(parts):
        if index % 2:
            if part[:1] in ("-", "+", "") or part[-1:] in ("-", "+"):
                return None
            shape.append(part)
        elif "{" in part or "}" in part:
            return None
        else:
            shape.append(bool(part))
    return tuple(shape)


@dataclass(frozen=True, slots=True)
class _Shape:
    """A string's tokens with its literal text left out: equal shapes parse alike.

    Jinja's parser sees tokens only; a literal (``data``) token becomes template data
    whatever it says, and only whether it is empty changes the tree. So strings of equal
    shapes have the same fields, the same single expression, the same validity.
    """

    tokens: tuple[object, ...]
    text: str = field(compare=False)


def _tokens(text: str) -> tuple[tuple[str, str | bool], ...]:
    return tuple(
        (kind, bool(value) if kind == "data" else value)
        for _, kind, value in ENV.lex(text)
        if kind != "whitespace"
    )


@lru_cache(maxsize=_CACHE_SIZE)
def _analyse_shape(shape: _Shape) -> Analysis:
    return _analyse_parsed(shape.text)


def _analyse_parsed(text: str) -> Analysis:
    ast = ENV.parse(text)
    expression = _single_expression(ast)
    if _codegen_may_fail(ast):
        # Compiling now raises the generator's error at load time, as it always did.
        if expression is None:
            compile_text(text)
        else:
            compile_expression(text)
    found = _field_chains(ast)
    lookup = None if expression is None else _lookup(expression)
    fallback = None if expression is None else _default_of_lookup(expression)
    return Analysis(found, expression is not None, lookup, _risks(ast), fallback)


def _risks(ast: nodes.Template) -> tuple[str, ...]:
    """Say what in ``ast`` can make a render slow or huge, depending on the event."""
    local = _local_names(ast)
    risks: dict[str, None] = {}
    for loop in ast.find_all(nodes.For):
        if any(True for _inner in loop.find_all(nodes.For)):
            risks["a loop inside a loop: the cost multiplies"] = None
    for node in ast.find_all(nodes.Mul):
        # `price * 2` stays a number, or at worst a text twice as long.
        if _reads_event(node, local) and not (_small(node.left) or _small(node.right)):
            risks["'*' over event values: a large value makes a huge result"] = None
    for power in ast.find_all(nodes.Pow):
        if _reads_event(power.right, local):
            risks["'**' with an exponent from the event: a large one makes a huge number"] = None
    for call in ast.find_all((nodes.Filter, nodes.Call, nodes.Mod)):
        if _formats(call) and _reads_event(call, local):
            risks["a format over event values: a width from the event can be huge"] = None
    return tuple(risks)


def _small(node: nodes.Expr) -> bool:
    return (
        isinstance(node, nodes.Const)
        and isinstance(node.value, int | float)
        and abs(node.value) <= 1_000
    )


def _formats(node: nodes.Node) -> bool:
    if isinstance(node, nodes.Filter):
        return node.name == "format"
    if isinstance(node, nodes.Call):
        return isinstance(node.node, nodes.Getattr) and node.node.attr in ("format", "format_map")
    return isinstance(node, nodes.Mod) and isinstance(node.left, nodes.Const | nodes.Concat)


def _reads_event(node: nodes.Node, local: set[str]) -> bool:
    return any(name.ctx == "load" and name.name not in local for name in node.find_all(nodes.Name))


def _local_names(ast: nodes.Template) -> set[str]:
    local = {name.name for name in ast.find_all(nodes.Name) if name.ctx != "load"}
    local.update(ENV.globals, _TEMPLATE_NAMES)
    return local


# Node kinds whose code generation itself can fail (a block defined twice, extends below the
# top level, a macro's caller argument): a template holding one is compiled at load time.
_CODEGEN_CHECKED: Final = (nodes.Block, nodes.Extends, nodes.Macro, nodes.CallBlock)


def _codegen_may_fail(ast: nodes.Template) -> bool:
    """Tell whether Jinja's code generator could reject ``ast``, which parsed cleanly.

    Besides :data:`_CODEGEN_CHECKED`, the generator rejects unknown filters and tests and an
    assignment to ``loop``; this errs on the side of compiling (an unknown filter inside an
    ``if`` only fails at render time, and compiling finds that out).
    """
    for node in ast.find_all(nodes.Node):
        if isinstance(node, _CODEGEN_CHECKED):
            return True
        if isinstance(node, nodes.Filter) and node.name not in ENV.filters:
            return True
        if isinstance(node, nodes.Test) and node.name not in ENV.tests:
            return True
        if isinstance(node, nodes.Name) and node.ctx == "store" and node.name == "loop":
            return True
    return False


def _lookup(expression: nodes.Expr) -> Field | None:
    """Return the path of an expression that only reads the event (``a.b[0].c``), else None."""
    chain = _chain(expression)
    if chain is None or chain[0] in ENV.globals or chain[0] in _TEMPLATE_NAMES:
        return None
    # `a[true]` parses to a key that is an int to Python; leave such oddities to Jinja.
    if any(isinstance(part, bool) for part in chain):
        return None
    return chain


_CONSTANTS: Final = (str, int, float, bool, type(None))


def _default_of_lookup(expression: nodes.Expr) -> tuple[Field, object] | None:
    """Return the path and constant of ``a.b | default(constant)``, else ``None``."""
    if not (
        isinstance(expression, nodes.Filter)
        and expression.name == "default"
        and expression.node is not None
        and len(expression.args) == 1
        and not expression.kwargs
        and expression.dyn_args is None
        and expression.dyn_kwargs is None
    ):
        return None
    (argument,) = expression.args
    if not isinstance(argument, nodes.Const) or type(argument.value) not in _CONSTANTS:
        return None
    path = _lookup(expression.node)
    return None if path is None else (path, argument.value)


def _single_expression(ast: nodes.Template) -> nodes.Expr | None:
    """Return the expression of a template that is exactly ``{{ expr }}``, else ``None``."""
    if len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output):
        return None
    output = ast.body[0].nodes
    if len(output) != 1 or isinstance(output[0], nodes.TemplateData):
        return None
    return output[0]


def _field_chains(ast: nodes.Template) -> tuple[Field, ...]:
    """Return the constant attribute/item chains read from the context, in order."""
    local = _local_names(ast)
    chains: list[Field] = []

    def visit(node: nodes.Node) -> None:
        chain = _chain(node)
        if chain is None:
            for child in node.iter_child_nodes():
                visit(child)
        elif chain[0] not in local:
            chains.append(chain)

    visit(ast)
    return tuple(chains)


def _chain(node: nodes.Node) -> Field | None:
    if isinstance(node, nodes.Name):
        return (node.name,)
    if isinstance(node, nodes.Getattr):
        base = _chain(node.node)
        return None if base is None else (*base, node.attr)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        key = node.arg.value
        base = _chain(node.node) if isinstance(key, str | int) else None
        return None if base is None else (*base, key)
    return None
