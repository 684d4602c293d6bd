"""The layout's one hard limit: no module of the package is longer than 450 lines."""

from __future__ import annotations

from pathlib import Path

import trigmail

MAX_LINES = 450
PACKAGE = Path(trigmail.__file__).parent


def _lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def test_no_module_is_longer_than_the_limit() -> None:
    modules = {path.relative_to(PACKAGE).as_posix(): path for path in PACKAGE.rglob("*.py")}
    too_long = {
        name: _lines(path) for name, path in sorted(modules.items()) if _lines(path) > MAX_LINES
    }
    assert too_long == {}
