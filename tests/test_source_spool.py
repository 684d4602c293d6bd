"""The JSONL spool: partial lines, rotation, truncation, missing files and bad lines."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from trigmail.errors import SourceError
from trigmail.sources import SourceItem, SpoolPosition, SpoolSource
from trigmail.sources.spool import DEFAULT_MAX_LINE_BYTES
from trigmail.sources.spool_tail import DEAD_RAW_MAX_BYTES, FINGERPRINT_MAX_BYTES

WAIT_S = 5.0  # an upper bound only: reads return as soon as lines are there
EMPTY_S = 0.05


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


@pytest.fixture
def open_source() -> Iterator[Callable[..., SpoolSource]]:
    """Start spool sources that are closed after the test."""
    made: list[SpoolSource] = []

    def start(
        path: Path, position: str | None = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    ) -> SpoolSource:
        source = SpoolSource(path, poll_s=0.01, max_line_bytes=max_line_bytes)
        source.start(position)
        made.append(source)
        return source

    yield start
    for source in made:
        source.close()


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)


def read_n(source: SpoolSource, count: int) -> list[SourceItem]:
    items: list[SourceItem] = []
    while len(items) < count:
        batch = source.read(count - len(items), WAIT_S)
        if not batch:
            break
        items += batch
    return items


def set_aside(source: SpoolSource, items: list[SourceItem]) -> None:
    """What the daemon does after its commit with the items the source refused."""
    for item in items:
        if item.refused is not None:
            source.dead_letter(item, *item.refused)


def datas(items: list[SourceItem]) -> list[bytes]:
    return [item.data for item in items]


def dead_letters(spool: Path) -> list[dict[str, str]]:
    dead = spool.with_name("events.dead.jsonl")
    return [json.loads(line) for line in dead.read_text(encoding="utf-8").splitlines()]


def test_name_and_dead_letter_path(spool: Path) -> None:
    source = SpoolSource(spool)
    assert source.name == f"spool:{spool.absolute()}"
    assert source.dead_path == spool.with_name("events.dead.jsonl")


def test_half_written_last_line_waits_for_its_newline(
    spool: Path, open_source: Callable[..., SpoolSource]
) -> None:
    append(spool, b'{"a": 1}\n{"b"')
    source = open_source(spool)
    assert datas(source.read(10, WAIT_S)) == [b'{"a": 1}']
    assert source.read(10, EMPTY_S) == []
    append(spool, b": 2}\n")
    item = read_n(source, 1)[0]
    assert item.data == b'{"b": 2}'
    assert item.ref == "events.jsonl:2"
    assert SpoolPosition.from_text(item.position).offset == spool.stat().st_size


def test_rename_rotation_drains_the_old_file_first(
    spool: Path, open_source: Callable[..., SpoolSource]
) -> None:
    old = spool.open("ab")
    try:
        old.write(b"old-1\n")
        old.flush()
        source = open_source(spool)
        assert datas(source.read(10, WAIT_S)) == [b"old-1"]
        old.write(b"old-2\n")
        old.flush()
        spool.rename(spool.with_name("events.jsonl.1"))
        # The producer has not reopened yet: it still writes to the renamed file.
        old.write(b"old-3\n")
        old.flush()
        append(spool, b"new-1\nnew-2\n")
        items = read_n(source, 4)
    finally:
        old.close()
    assert datas(items) == [b"old-2", b"old-3", b"new-1", b"new-2"]
    assert [item.ref for item in items] == [f"events.jsonl:{n}" for n in (2, 3, 1, 2)]
    assert SpoolPosition.from_text(items[-1].position).inode == spool.stat().st_ino


def test_rename_rotation_sets_aside_an_unfinished_last_line(
    spool: Path, open_source: Callable[..., SpoolSource]
) -> None:
    append(spool, b"old-1\nold-unfinished")
    source = open_source(spool)
    assert datas(source.read(10, WAIT_S)) == [b"old-1"]
    spool.rename(spool.with_name("events.jsonl.1"))
    append(spool, b"new-1\n")
    refused, new = read_n(source, 2)
    assert (new.data, new.refused) == (b"new-1", None)
    # Refused, not written: the daemon puts it in the ledger, then here.
    assert refused.refused is not None
    assert not spool.with_name("events.dead.jsonl").exists()
    set_aside(source, [refused, new])
    letters = dead_letters(spool)
    assert [(d["reason"], d["raw"], d["ref"]) for d in letters] == [
        ("incomplete_line", "old-unfinished", "events.jsonl:2")
    ]


@pytest.mark.parametrize(
    "rewrite",
    [
        # copytruncate: the file is emptied and gets a short line
        b"c-1\n",
        # emptied and rewritten past the old offset before the reader looked again
        b"a much longer first line than before\nc-2\n",
    ],
)
def test_truncation_restarts_at_zero(
    spool: Path, open_source: Callable[..., SpoolSource], rewrite: bytes
) -> None:
    append(spool, b"a-1\na-2\na-3\n")
    source = open_source(spool)
    assert datas(read_n(source, 3)) == [b"a-1", b"a-2", b"a-3"]
    spool.write_bytes(rewrite)
    expected = rewrite.splitlines()
    items = read_n(source, len(expected))
    assert datas(items) == expected
    assert items[0].ref == "events.jsonl:1"


def _expected_position(spool: Path, data: bytes, line: int) -> SpoolPosition:
    """The position after line ``line`` of ``data`` (the file's bytes), built field by field."""
    stat = spool.stat()
    head = data[: data.index(b"\n") + 1][:FINGERPRINT_MAX_BYTES]
    offset = sum(len(each) + 1 for each in data.split(b"\n")[:line])
    fp = hashlib.sha256(head).hexdigest()[:32]
    return SpoolPosition(stat.st_dev, stat.st_ino, fp, len(head), offset, line)


def test_each_position_is_the_files_own_before_and_after_a_rewrite(
    spool: Path, open_source: Callable[..., SpoolSource]
) -> None:
    # Positions share their text up to the offset within a file: after a rewrite in place
    # (same inode, another first line) none may keep the old file's fingerprint.
    first = b"a-1\n\na-3\n"
    append(spool, first)
    source = open_source(spool)
    items = read_n(source, 2)
    assert [item.position for item in items] == [
        _expected_position(spool, first, 1).to_text(),
        _expected_position(spool, first, 3).to_text(),
    ]
    second = b"a much longer first line than before\nb-2\n"
    spool.write_bytes(second)
    items = read_n(source, 2)
    assert [SpoolPosition.from_text(item.position) for item in items] == [
        _expected_position(spool, second, 1),
        _expected_position(spool, second, 2),
    ]
    assert [item.position for item in items] == [
        json.dumps(asdict(SpoolPosition.from_text(item.position)), separators=(",", ":"))
        for item in items
    ]


def _replace_by_another_file(spool: Path) -> None:
    spool.rename(spool.with_name("events.jsonl.1"))
    spool.write_bytes(b"b-1\nb-2\nb-3\nb-4\n")


def _rewrite_in_place(spool: Path) -> None:
    spool.write_bytes(b"b-1\nb-2\nb-3\nb-4\n")


def _truncate_in_place(spool: Path) -> None:
    with spool.open("r+b") as out:
        out.truncate(4)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # rotated while the daemon was down: another inode at the path
        (_replace_by_another_file, [b"b-1", b"b-2", b"b-3", b"b-4"]),
        # same inode, other first line: the fingerprint tells them apart
        (_rewrite_in_place, [b"b-1", b"b-2", b"b-3", b"b-4"]),
        # same file, now shorter than the committed offset
        (_truncate_in_place, [b"a-1"]),
    ],
)
def test_start_with_the_position_of_another_file_starts_at_zero(
    spool: Path,
    open_source: Callable[..., SpoolSource],
    change: Callable[[Path], None],
    expected: list[bytes],
) -> None:
    append(spool, b"a-1\na-2\na-3\n")
    first = open_source(spool)
    committed = read_n(first, 3)[-1].position
    first.close()
    change(spool)
    source = open_source(spool, committed)
    assert datas(read_n(source, len(expected))) == expected


@pytest.mark.parametrize(
    "first_line",
    [
        # the fingerprint covers the whole first line
        b"a-1",
        # the fingerprint covers only the first FINGERPRINT_MAX_BYTES of a long first line
        b"a" * (FINGERPRINT_MAX_BYTES * 3),
    ],
)
def test_start_with_its_own_position_resumes(
    spool: Path, open_source: Callable[..., SpoolSource], first_line: bytes
) -> None:
    append(spool, first_line + b"\na-2\na-3\n")
    first = open_source(spool)
    committed = read_n(first, 2)[-1].position
    first.close()
    assert SpoolPosition.from_text(committed).fp_bytes <= FINGERPRINT_MAX_BYTES
    source = open_source(spool, committed)
    item = read_n(source, 1)[0]
    assert (item.data, item.ref) == (b"a-3", "events.jsonl:3")


@pytest.mark.parametrize(
    "position",
    [
        # not JSON
        "spool at 12",
        # JSON but not a spool position
        '{"offset": 3}',
        # the right keys with a wrong type
        '{"dev": 1, "inode": 2, "fp": "ab", "fp_bytes": 3, "offset": "4", "line": 5}',
    ],
)
def test_start_rejects_a_malformed_position(spool: Path, position: str) -> None:
    source = SpoolSource(spool)
    with pytest.raises(SourceError, match="not a spool position"):
        source.start(position)
    source.close()


def test_missing_file_is_waited_for(
    spool: Path, open_source: Callable[..., SpoolSource], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trigmail.sources.spool")
    source = open_source(spool)
    assert source.read(10, EMPTY_S) == []
    assert source.read(10, EMPTY_S) == []
    append(spool, b"first\n")
    assert datas(read_n(source, 1)) == [b"first"]
    waiting = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waiting) == 1


def test_blank_lines_are_skipped(spool: Path, open_source: Callable[..., SpoolSource]) -> None:
    append(spool, b"a\n\n   \n\t\r\nb\r\n")
    items = read_n(open_source(spool), 2)
    assert datas(items) == [b"a", b"b"]
    assert [item.ref for item in items] == ["events.jsonl:1", "events.jsonl:5"]


def test_oversized_line_is_set_aside(spool: Path, open_source: Callable[..., SpoolSource]) -> None:
    long_line = b"x" * 5000
    append(spool, b"short-1\n" + long_line + b"\nshort-2\n")
    source = open_source(spool, max_line_bytes=100)
    items = read_n(source, 3)
    assert [item.refused is not None for item in items] == [False, True, False]
    assert datas([items[0], items[2]]) == [b"short-1", b"short-2"]
    set_aside(source, items)
    (letter,) = dead_letters(spool)
    assert (letter["reason"], letter["ref"]) == ("line_too_long", "events.jsonl:2")
    assert letter["raw"] == "x" * DEAD_RAW_MAX_BYTES


def test_oversized_line_arriving_in_pieces_is_skipped_as_it_comes(
    spool: Path, open_source: Callable[..., SpoolSource]
) -> None:
    source = open_source(spool, max_line_bytes=100)
    append(spool, b"y" * 150)
    assert source.read(10, EMPTY_S) == []
    append(spool, b"y" * 150 + b"\nnext\n")
    refused, item = read_n(source, 2)
    assert (refused.ref, refused.refused is not None) == ("events.jsonl:1", True)
    assert (item.data, item.ref) == (b"next", "events.jsonl:2")
    assert SpoolPosition.from_text(item.position).offset == 300 + len(b"\nnext\n")
    set_aside(source, [refused, item])
    (letter,) = dead_letters(spool)
    assert letter["raw"] == "y" * 150


def test_invalid_utf8_is_delivered_raw_and_set_aside_replaced(
    spool: Path, open_source: Callable[..., SpoolSource]
) -> None:
    append(spool, b'\xff{"event": "\xc3"}\n')
    source = open_source(spool)
    (item,) = read_n(source, 1)
    assert item.data == b'\xff{"event": "\xc3"}'
    source.dead_letter(item, "invalid_json", "not UTF-8")
    (letter,) = dead_letters(spool)
    assert letter["raw"] == '\ufffd{"event": "\ufffd"}'
    assert letter["source"] == f"spool:{spool.absolute()}"


def test_read_before_start_is_a_programming_error(spool: Path) -> None:
    with pytest.raises(RuntimeError, match="before start"):
        SpoolSource(spool).read(1, EMPTY_S)
