"""A SQLite ledger has one ``serve``: its flock is held across processes and dies with them.

A flock belongs to an open file, so two ledger objects in this process would prove little about
two processes: the holder here is a child Python process, really killed with SIGKILL.
"""

from __future__ import annotations

import select
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fake_sendgrid import FakeSendGrid
from tests.serve_harness import (
    WAIT_S,
    Serve,
    append_events,
    clean_env,
    ping,
    sends,
    serve_in,
    status_json,
    wait_for,
)
from trigmail.errors import LedgerError
from trigmail.ledger import SqliteLedger
from trigmail.ledger.base import SendState
from trigmail.service import SQLITE_WORKER_LOCK

REFUSED = "a SQLite ledger has one worker only (use a PostgreSQL ledger for several)"

# Takes the lock named argv[2] on the ledger argv[1], says whether it got it, and holds it
# until its stdin closes (so it never outlives the test) or it is killed.
_HOLDER = """
import sys
from trigmail.ledger import SqliteLedger
ledger = SqliteLedger(sys.argv[1])
print("acquired" if ledger.acquire_exclusive(sys.argv[2]) else "refused", flush=True)
sys.stdin.read()
"""


@contextmanager
def holder(db: Path, name: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child process trying ``name`` on ``db``: yields it and its answer, once it answered."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db), name],
        env=clean_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], WAIT_S)
        assert ready, f"the child did not answer within {WAIT_S:.0f}s"
        yield child, child.stdout.readline().strip()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    SqliteLedger(tmp_path / "ledger.db").close()  # created and migrated once, up front
    return tmp_path / "ledger.db"


def test_a_lock_held_by_another_process_is_refused_until_that_process_dies(db: Path) -> None:
    ledger = SqliteLedger(db)
    try:
        with holder(db, "serve") as (child, answer):
            assert answer == "acquired"
            assert not ledger.acquire_exclusive("serve")
            assert ledger.acquire_exclusive("other")  # another name is another lock
            child.send_signal(signal.SIGKILL)
            assert child.wait(WAIT_S) == -signal.SIGKILL
            assert ledger.acquire_exclusive("serve")
            assert ledger.acquire_exclusive("serve")  # held already
    finally:
        ledger.close()


def test_a_held_lock_refuses_another_process_and_close_releases_it(db: Path) -> None:
    ledger = SqliteLedger(db)
    try:
        assert ledger.acquire_exclusive("serve")
        with holder(db, "serve") as (_, answer):
            assert answer == "refused"
    finally:
        ledger.close()
    with holder(db, "serve") as (_, answer):
        assert answer == "acquired"


def test_opening_takes_no_lock_and_the_ledger_stays_readable_beside_the_holder(
    db: Path,
) -> None:
    with holder(db, "serve") as (_, answer):
        assert answer == "acquired"
        reader = SqliteLedger(db)
        try:
            assert reader.status().counts[SendState.SCHEDULED] == 0
        finally:
            reader.close()


def test_the_lock_file_sits_beside_the_database_readable_by_its_owner_only(db: Path) -> None:
    ledger = SqliteLedger(db)
    try:
        assert ledger.acquire_exclusive("serve")
        assert ledger.acquire_exclusive("spool:/var/spool/trigmail/events.jsonl")
    finally:
        ledger.close()
    locks = sorted(p.name for p in db.parent.glob("*.lock"))
    assert len(locks) == 2
    assert "ledger.db.serve.lock" in locks
    # A name with a slash is hashed: no lock file outside the database's directory.
    assert all(name.startswith("ledger.db.") for name in locks)
    for name in locks:
        assert stat.S_IMODE((db.parent / name).stat().st_mode) & 0o077 == 0


def test_a_closed_ledger_cannot_take_a_lock(db: Path) -> None:
    ledger = SqliteLedger(db)
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.acquire_exclusive("serve")


# -- end to end: the real `trigmail serve` ------------------------------------------------------


def serve_on(root: Path, fake: FakeSendGrid, source: Mapping[str, Any], name: str) -> Serve:
    """A serve of config ``<name>.yaml`` in ``root``, on the ledger ``root/ledger.db``."""
    return serve_in(root, fake.url, fake.api_key, source, name)


def assert_refused(second: Serve, ledger: Path) -> None:
    """``second`` (started) exits 1, naming the ledger, before it is ready."""
    assert second.wait_exit() == 1, second.stderr
    text = " ".join(second.stderr.split())  # the console may wrap a long message
    assert REFUSED in text
    assert f"the SQLite ledger {ledger}" in text
    assert "serve: ready" not in text


def in_doubt_cli(cwd: Path, ledger: Path) -> subprocess.CompletedProcess[str]:
    """``trigmail ledger in-doubt --ledger LEDGER``, run as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "trigmail", "ledger", "in-doubt", "--ledger", str(ledger)],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def wait_sent(ledger: Path, key: str) -> None:
    def sent() -> bool:
        send = sends(ledger).get(key)
        return send is not None and send.state is SendState.SENT

    wait_for(sent, f"{key} to be sent")


@pytest.mark.slow
def test_a_second_serve_on_the_same_sqlite_ledger_exits_and_the_first_goes_on(
    tmp_path: Path, sendgrid_fake: FakeSendGrid
) -> None:
    ledger = tmp_path / "ledger.db"
    spool = {"spool": str(tmp_path / "events.jsonl")}
    # The second reads another spool: the ledger alone is what it may not share.
    other = {"spool": str(tmp_path / "other.jsonl")}
    with serve_on(tmp_path, sendgrid_fake, spool, "first") as first:
        first.wait_ready()
        assert (tmp_path / f"ledger.db.{SQLITE_WORKER_LOCK}.lock").exists()
        with serve_on(tmp_path, sendgrid_fake, other, "second") as second:
            assert_refused(second, ledger)
        # The first still works, and the ledger commands still read beside it.
        append_events(tmp_path / "events.jsonl", [ping(1)])
        wait_sent(ledger, "notify:p1")
        assert status_json(tmp_path, ledger)["counts"]["sent"] == 1
        listed = in_doubt_cli(tmp_path, ledger)
        assert listed.returncode == 0, listed.stderr
        assert first.proc.poll() is None
        first.signal(signal.SIGKILL)
        assert first.wait_exit() == -signal.SIGKILL
    # The kill freed the lock: the next serve starts.
    with serve_on(tmp_path, sendgrid_fake, other, "second") as second:
        second.wait_ready()
        assert second.stop() == 0
    assert sendgrid_fake.accepted_keys() == ["notify:p1"]


@pytest.mark.slow
@pytest.mark.redis
def test_two_redis_workers_cannot_share_one_sqlite_ledger(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, redis_url: str
) -> None:
    stream = f"trigmail-e2e:{uuid.uuid4().hex[:12]}"

    def redis_source(consumer: str) -> dict[str, Any]:
        return {"redis": {"url": redis_url, "stream": stream, "consumer": consumer, "block": 0.2}}

    with serve_on(tmp_path, sendgrid_fake, redis_source("worker-a"), "a") as first:
        first.wait_ready()
        with serve_on(tmp_path, sendgrid_fake, redis_source("worker-b"), "b") as second:
            assert_refused(second, tmp_path / "ledger.db")
        assert first.stop() == 0
