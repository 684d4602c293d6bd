"""The bounds of one render of ``send.data``: CPU time, steps, and the size of what it makes.

A template is written by a marketer and fed by producers: ``{% for %}`` over
``range(100000)`` twice, ``'a' * properties.n``, ``10 ** properties.n`` or
``'{0:>300000000}'.format(x)`` would otherwise hang the serve loop or take gigabytes. Every
render runs inside a :class:`Budget`; the sandbox (``rules.sandbox``) charges it one step per
loop iteration, call, filter, operator and output, and checks a size before anything large is
built. Crossing a bound raises :class:`RenderLimitError`, which the render turns into a
``template_error`` for that one send (docs/security.md).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, TypeVar

# Thread CPU time, not wall time: a daemon descheduled for a second must not fail a template
# that takes microseconds (a template_error sets the send aside for good).
RENDER_CPU_S: Final = 0.5
# Loop iterations, calls, filters, operators and outputs of one render: a rule that loops over
# a 200-item cart with ten fields each takes about 5,000.
MAX_STEPS: Final = 100_000
# The longest string or list a template may make, and the longest rendered value.
MAX_CHARS: Final = 100_000
# All the text one render emits, captured blocks (`{% set %}…{% endset %}`) included.
MAX_EMITTED_CHARS: Final = 1_000_000
# All the strings and lists one render makes, added up: `range(10000)|map('center', 99999)`
# makes each within MAX_CHARS, and a gigabyte in all.
MAX_MADE_CHARS: Final = 5_000_000
# range() longer than this is refused (Jinja's own sandbox allows 100,000 per loop).
MAX_RANGE: Final = 10_000
# Integers of more bits are refused: `10 ** n` for a large n takes minutes.
MAX_INT_BITS: Final = 8_192
# A Jinja string is compiled on its first render, in the serve loop: about 20 ms per 1,000
# characters. Templates in data are short (a name, a link); the layout lives in SendGrid.
MAX_TEMPLATE_CHARS: Final = 10_000
MAX_TEMPLATES: Final = 1_000

# How many steps go by between two reads of the CPU clock (it costs about a microsecond).
CLOCK_EVERY: Final = 64


class RenderLimitError(Exception):
    """Raised inside a render that crosses one of the bounds above."""


class Budget:
    """What one render may still spend."""

    __slots__ = ("cpu_deadline_s", "emitted", "made", "steps")

    def __init__(self) -> None:
        # The CPU clock is a system call (about 3 us in a VM), once per send: read when the
        # render first runs Jinja code (start_clock) or checks its steps, never for data
        # read by plain lookups alone (bounded work, a dict walk per field).
        self.cpu_deadline_s: float | None = None
        self.steps = 0
        self.emitted = 0
        self.made = 0


class _Local(threading.local):
    # A class default: a thread that never rendered reads None, where getattr with a
    # default made and dropped an AttributeError per read.
    budget: Budget | None = None


_local = _Local()
_A = TypeVar("_A")
_R = TypeVar("_R")


@contextmanager
def budget() -> Iterator[None]:
    """Render inside a budget: a new one, or the one already open on this thread."""
    if _local.budget is not None:
        yield
        return
    _local.budget = Budget()
    try:
        yield
    finally:
        _local.budget = None


def within_budget(render: Callable[[_A], _R], arg: _A) -> _R:
    """Return ``render(arg)`` inside a budget, as :func:`budget` does: a plain call rather
    than a generator's context manager, on the path of every send's data."""
    if _local.budget is not None:
        return render(arg)
    _local.budget = Budget()
    try:
        return render(arg)
    finally:
        _local.budget = None


def budget_open() -> bool:
    """Whether a render on this thread is inside a budget already."""
    return _local.budget is not None


def start_clock() -> None:
    """Start the open budget's CPU clock, if it has not started: before Jinja code runs."""
    current: Budget | None = _local.budget
    if current is not None and current.cpu_deadline_s is None:
        current.cpu_deadline_s = time.thread_time() + RENDER_CPU_S


def step() -> None:
    """Charge one step; check the CPU clock every few.

    Outside a render (Jinja folds constants at compile time) nothing is charged.
    """
    current: Budget | None = _local.budget
    if current is not None:
        current.steps += 1
        if current.steps > MAX_STEPS or not current.steps % CLOCK_EVERY:
            _check_steps(current)


def _check_steps(current: Budget) -> None:
    if current.steps > MAX_STEPS:
        raise RenderLimitError(f"the template took more than {MAX_STEPS} steps (loops, calls)")
    now_s = time.thread_time()
    if current.cpu_deadline_s is None:
        current.cpu_deadline_s = now_s + RENDER_CPU_S
    elif now_s > current.cpu_deadline_s:
        raise RenderLimitError(f"the template took more than {RENDER_CPU_S} s of CPU")


def emit(value: Any) -> str:
    """Count one output of the template (the text it writes), and return it as text."""
    text = value if type(value) is str else str(value)
    current: Budget | None = _local.budget
    if current is not None:
        # step(), inlined: this runs for every piece of text a template writes.
        current.steps += 1
        current.emitted += len(text)
        if current.steps > MAX_STEPS or not current.steps % CLOCK_EVERY:
            _check_steps(current)
        if current.emitted > MAX_EMITTED_CHARS:
            raise RenderLimitError(f"the template wrote more than {MAX_EMITTED_CHARS} characters")
    return text


def check_value(value: Any) -> Any:
    """Return ``value`` if it is within the size bounds, else raise; count what was made."""
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        check_length(len(value))
        current: Budget | None = _local.budget
        if current is not None:
            current.made += len(value)
            if current.made > MAX_MADE_CHARS:
                raise RenderLimitError(
                    f"the template made more than {MAX_MADE_CHARS} characters or items in all"
                )
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise RenderLimitError(f"a number of more than {MAX_INT_BITS} bits")
    return value


def check_length(length: int) -> None:
    """Raise when a string or list of ``length`` would be too long to make."""
    if length > MAX_CHARS:
        raise RenderLimitError(f"a value of {length} characters or items, over {MAX_CHARS}")


def bounded_range(*args: int) -> range:
    """``range`` for templates, refused beyond :data:`MAX_RANGE` items."""
    result = range(*args)
    if len(result) > MAX_RANGE:
        raise RenderLimitError(f"range() of {len(result)} items, over {MAX_RANGE}")
    return result


def bounded_iter(iterable: Any) -> Iterator[Any]:
    """Iterate as ``{% for %}`` does, one step per item."""
    for item in iterable:
        step()
        yield item


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``*``, ``**``, ``+`` and ``%`` whose result would be too large, before it is made."""
    if operator == "*":
        _check_repeat(left, right)
        _check_repeat(right, left)
    elif operator == "**":
        _check_power(left, right)
    elif operator == "+":
        if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            check_length(len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        check_printf(left)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_repeat(sequence: Any, times: Any) -> None:
    if isinstance(sequence, str | bytes | list | tuple) and _is_int(times):
        check_length(len(sequence) * max(times, 0))
    elif (
        _is_int(sequence)
        and _is_int(times)
        and sequence.bit_length() + times.bit_length() > MAX_INT_BITS
    ):
        raise RenderLimitError(f"a product of more than {MAX_INT_BITS} bits")


def _check_power(base: Any, exponent: Any) -> None:
    if not (_is_int(base) and _is_int(exponent)) or exponent <= 1 or abs(base) <= 1:
        # Floats overflow at once (OverflowError), and 0, 1, -1 stay small.
        return
    if base.bit_length() * exponent > MAX_INT_BITS:
        raise RenderLimitError(f"a power of more than {MAX_INT_BITS} bits")


# A printf field: flags, width, precision (Python's `%` and Jinja's `format` filter).
_PRINTF: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
# A str.format spec: fill and align, sign, z, #, 0, width, grouping, precision, type.
_SPEC: Final = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d+)?[,_]?(?:\.(\d+))?[a-zA-Z%]?", re.S)


def check_printf(template: str) -> None:
    """Refuse a ``%`` format whose width or precision is too large, or taken from a value."""
    for match in _PRINTF.finditer(template):
        _check_widths(match.group(1), match.group(2))


def check_format_spec(spec: str) -> None:
    """Refuse a ``str.format`` spec whose width or precision is too large."""
    match = _SPEC.fullmatch(spec)
    if match is not None:
        _check_widths(match.group(1), match.group(2))


def _check_widths(*widths: str | None) -> None:
    for width in widths:
        if width == "*":
            raise RenderLimitError("a format width taken from a value ('*') is not allowed")
        # The length first: int() refuses text of over 4,300 digits.
        if width is not None and (len(width) > 6 or int(width) > MAX_CHARS):
            raise RenderLimitError(f"a format width or precision over {MAX_CHARS}")


def check_str_call(method: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse a call of a ``str`` method that would make a string too long."""
    name = getattr(method, "__name__", "")
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str | bytes):
        return
    if name in ("center", "ljust", "rjust", "zfill") and args and _is_int(args[0]):
        check_length(args[0])
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if _is_int(size):
            tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            check_length(len(owner) + tabs * size)
    elif name == "replace" and len(args) >= 2:
        check_replace(owner, args[0], args[1])
    elif name == "join" and args:
        check_join(owner, args[0])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str | bytes)), default=1)
        check_length(len(owner) * longest)


def check_replace(text: Any, old: Any, new: Any) -> None:
    """Refuse a replace whose result would be too long."""
    if (
        isinstance(text, str | bytes)
        and isinstance(new, str | bytes)
        and isinstance(old, str | bytes)
    ):
        count = len(text) + 1 if not old else text.count(old)  # type: ignore[arg-type]
        check_length(len(text) + count * max(len(new) - len(old), 0))


def check_join(separator: Any, items: Any) -> None:
    """Refuse a join whose result would be too long (only lists and tuples can be measured)."""
    if isinstance(items, list | tuple) and isinstance(separator, str | bytes):
        check_length(len(items) * len(separator))
        check_length(sum(len(item) if isinstance(item, str) else 1 for item in items))
