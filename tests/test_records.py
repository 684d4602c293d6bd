"""``@record`` values: plain dataclasses at run time, immutable to the type checker."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from mypy import api as mypy_api

from tests.ledger_helpers import make_send
from trigmail.decisions import Fire, Reason, Skip
from trigmail.ledger.base import evolve

ASSIGNING = """
from trigmail.decisions import Fire
fire = Fire("welcome:u1")
fire.key = "another"
"""


def test_records_compare_and_hash_by_value() -> None:
    assert Fire("k") == Fire("k")
    assert hash(Fire("k")) == hash(Fire("k"))
    assert {Fire("k"), Fire("k"), Fire("j")} == {Fire("k"), Fire("j")}
    assert replace(Skip("r", Reason.NO_RULE), detail="why") == Skip("r", Reason.NO_RULE, "why")


def test_mypy_refuses_an_assignment_to_a_field(tmp_path: Path) -> None:
    # The immutability the run time does not enforce is enforced here, as in CI's mypy run.
    source = tmp_path / "assigning.py"
    source.write_text(ASSIGNING)
    cache = tmp_path / "mypy-cache"
    stdout, _stderr, status = mypy_api.run(
        ["--strict", "--cache-dir", str(cache), "--no-error-summary", str(source)]
    )
    assert status == 1
    assert 'Property "key" defined in "Fire" is read-only' in stdout
    assert "assigning.py:4:" in stdout


def test_evolve_copies_a_send_with_changes() -> None:
    send = make_send("cart:1", datetime(2026, 11, 28, tzinfo=UTC))
    moved = evolve(send, attempts=3)
    assert (moved.attempts, send.attempts) == (3, 0)
    assert replace(moved, attempts=0) == send
