"""A kill between a batch's commit and its dead-letter writes loses nothing: on start the
daemon hands the ledger's copy of the last batch's letters back to the source."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from trigmail.ledger.base import DeadLetter
from trigmail.sources.base import SourceItem
from trigmail.sources.spool import SpoolSource

AT = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


def letter(n: int) -> DeadLetter:
    return DeadLetter(AT, "spool:x", f"events.jsonl:{n}", f"bad {n}", "invalid_json", "not JSON")


def records(source: SpoolSource) -> list[tuple[str, str]]:
    lines = source.dead_path.read_text().splitlines()
    return [(json.loads(line)["ref"], json.loads(line)["raw"]) for line in lines]


def test_only_the_letters_the_file_lacks_are_written_again(tmp_path: Path) -> None:
    source = SpoolSource(tmp_path / "events.jsonl")
    # Earlier batches, then the first letter of the last batch: the crash came after it.
    for n in (1, 2, 3):
        source.dead_letter(SourceItem(f"bad {n}".encode(), "", f"events.jsonl:{n}"), "x", "")
    source.dead_letter(SourceItem(b"bad 4", "", "events.jsonl:4"), "invalid_json", "not JSON")
    assert source.restore_dead_letters([letter(4), letter(5), letter(6)]) == 2
    assert records(source)[-3:] == [
        ("events.jsonl:4", "bad 4"),
        ("events.jsonl:5", "bad 5"),
        ("events.jsonl:6", "bad 6"),
    ]
    # A second start finds them all: nothing is written twice.
    assert source.restore_dead_letters([letter(4), letter(5), letter(6)]) == 0
    assert len(records(source)) == 6


def test_a_missing_dead_letter_file_gets_every_letter(tmp_path: Path) -> None:
    source = SpoolSource(tmp_path / "events.jsonl")
    assert source.restore_dead_letters([letter(1)]) == 1
    assert source.restore_dead_letters([]) == 0
    assert records(source) == [("events.jsonl:1", "bad 1")]
