"""What is wrong with a rule file, where, and how bad: the vocabulary of ``validate``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from trigmail.rules.yamlsource import Path

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class Severity(StrEnum):
    """An error makes a rule set invalid; a warning is advice (an error under ``--strict``)."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One problem, in the coordinates of the file it was found in (1-based line and column).

    ``path`` is the key path inside the file, such as ``rules[0].when.properties.x``.
    """

    file: str
    line: int
    col: int
    severity: Severity
    path: str
    message: str

    def __str__(self) -> str:
        where = f" (at {self.path})" if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}{where}"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "severity": self.severity.value,
            "path": self.path,
            "message": self.message,
        }


@dataclass(frozen=True)
class Finding:
    """A problem found in one document, before it is placed in a file.

    Args:
        path: the key path inside the document.
        message: what is wrong and, where possible, how to fix it.
        severity: error or warning.
        at_key: point at the mapping key rather than at its value (an unknown key).
    """

    path: Path
    message: str
    severity: Severity = Severity.ERROR
    at_key: bool = False


def format_path(path: Path) -> str:
    """Return ``path`` as people read it (``rules[0].send.data``); odd keys are quoted."""
    parts: list[str] = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _PLAIN_KEY.match(part):
            parts.append(f".{part}" if parts else part)
        else:
            parts.append(f"[{part!r}]")
    return "".join(parts)
