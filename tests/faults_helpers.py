"""The events and rules of the fault tests around the daemon (tests/test_faults_*.py): each
ping sends one email at once, key ``notify:p<n>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.reliability.oracle import RULES_YAML


def ping(n: int) -> dict[str, Any]:
    """A ping: rule notify sends key ``notify:p<n>`` at once."""
    return {"id": f"p{n}", "event": "ping", "user_id": f"u{n}", "email": f"u{n}@example.com",
            "properties": {"note": f"note {n}"}}  # fmt: skip


def keys(numbers: range) -> set[str]:
    return {f"notify:p{n}" for n in numbers}


def make_rules(root: Path, template: str = "d-notify") -> Path:
    rules = root / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(RULES_YAML.replace("d-notify", template))
    return rules
