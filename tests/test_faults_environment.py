"""Faults around the daemon rather than in it, each by a real mechanism: the ledger locked by
another writer, its disk full, the outbox unwritable, the rules directory gone.

Each test waits for the daemon to say it met the fault (a log line) before lifting it, then
checks that every event still became exactly one email.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fake_sendgrid import FakeSendGrid
from tests.faults_helpers import keys, make_rules, ping
from tests.serve_harness import Serve, append_events, clean_env, sends, wait_for, write_config
from trigmail.ledger.base import SendState

pytestmark = pytest.mark.slow


def serve_spool(root: Path, fake: FakeSendGrid, ledger: Path) -> Serve:
    config = write_config(
        root / "trigmail.yaml",
        fake_url=fake.url,
        source={"spool": str(root / "events.jsonl")},
        rules_dir=root / "rules",
        ledger=ledger,
    )
    args = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
    return Serve(root, args, clean_env({"SENDGRID_API_KEY": fake.api_key}))


def wait_sent(ledger: Path, expected: set[str], timeout_s: float = 30) -> None:
    def done() -> bool:
        found = sends(ledger)
        return all(k in found and found[k].state is SendState.SENT for k in expected)

    wait_for(done, f"{len(expected)} sends to be sent", timeout_s)


def assert_once(fake: FakeSendGrid, expected: set[str]) -> None:
    assert Counter(fake.accepted_keys()) == Counter(expected)


# -- the ledger locked by another writer --------------------------------------------------------


def test_a_locked_ledger_pauses_consuming_and_loses_nothing(
    tmp_path: Path, sendgrid_fake: FakeSendGrid
) -> None:
    make_rules(tmp_path)
    ledger = tmp_path / "ledger.db"
    spool = tmp_path / "events.jsonl"
    with serve_spool(tmp_path, sendgrid_fake, ledger) as serve:
        serve.wait_ready()
        append_events(spool, [ping(n) for n in range(5)])
        wait_sent(ledger, keys(range(5)))
        other = sqlite3.connect(ledger, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
            mark = serve.mark()
            append_events(spool, [ping(n) for n in range(5, 25)])
            serve.wait_line(r"ledger: unavailable, pausing: .*locked", after=mark)
        finally:
            other.execute("ROLLBACK")
            other.close()
        wait_sent(ledger, keys(range(25)))
        assert serve.stop() == 0
    assert_once(sendgrid_fake, keys(range(25)))


# -- the ledger's disk full ---------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``: a real filesystem that fills up (needs root)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the disk-full case (as root)")
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` with one file until the next write fails."""
    filler = directory / "filler"
    with filler.open("wb") as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 65536)
            file.flush()
    return filler


def test_a_full_disk_stops_consuming_says_so_and_resumes_losing_nothing(
    tmp_path: Path, sendgrid_fake: FakeSendGrid
) -> None:
    make_rules(tmp_path)
    spool = tmp_path / "events.jsonl"
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        ledger = disk / "ledger.db"
        with serve_spool(tmp_path, sendgrid_fake, ledger) as serve:
            serve.wait_ready()
            append_events(spool, [ping(n) for n in range(5)])
            wait_sent(ledger, keys(range(5)))
            filler = fill(disk)
            mark = serve.mark()
            fed = 5

            def full() -> bool:
                # The WAL has room for some commits: feed until one needs more than is left.
                nonlocal fed
                if "disk is full" in "\n".join(serve.lines[mark:]):
                    return True
                append_events(spool, [ping(n) for n in range(fed, fed + 50)])
                fed += 50
                return False

            wait_for(full, "the ledger to report its disk full", 60)
            serve.wait_line(r"ledger: unavailable, pausing: .*disk is full", after=mark)
            filler.unlink()
            wait_sent(ledger, keys(range(fed)), 60)
            assert serve.stop() == 0
    assert_once(sendgrid_fake, keys(range(fed)))


# -- an unwritable outbox -----------------------------------------------------------------------


def test_an_unwritable_outbox_is_retried_and_each_email_written_once(tmp_path: Path) -> None:
    make_rules(tmp_path)
    # Root ignores permission bits: a directory under a regular file fails for everyone.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    outbox = blocker / "outbox"
    ledger = tmp_path / "ledger.db"
    config = {
        "source": {"spool": str(tmp_path / "events.jsonl")},
        "rules_dir": str(tmp_path / "rules"),
        "ledger": str(ledger),
        "provider": {"outbox": {"dir": str(outbox)}},
        "delivery": {"retry_base": 0.05, "retry_cap": 0.2, "max_attempts": 10_000},
    }
    (tmp_path / "trigmail.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "trigmail.yaml"), "--metrics-listen", "127.0.0.1:0"]
    with Serve(tmp_path, args, clean_env()) as serve:
        serve.wait_ready()
        append_events(tmp_path / "events.jsonl", [ping(n) for n in range(5)])

        def retrying() -> bool:
            found = sends(ledger)
            return len(found) == 5 and all(
                s.attempts >= 2 and "not writable" in (s.last_error or "") for s in found.values()
            )

        wait_for(retrying, "every send to be retried on the unwritable outbox")
        blocker.unlink()
        wait_sent(ledger, keys(range(5)))
        assert serve.stop() == 0
    written = sorted(p.name for p in outbox.iterdir())
    assert len(written) == 5
    assert not [name for name in written if name.startswith(".tmp-")]


# -- the rules directory vanishing --------------------------------------------------------------


def _template(fake: FakeSendGrid, key: str) -> str:
    [template] = [
        body["template_id"]
        for body in fake.accepted
        if key in [p["custom_args"]["trigmail_key"] for p in body["personalizations"]]
    ]
    return str(template)


def test_a_vanished_rules_directory_keeps_the_last_good_rules(
    tmp_path: Path, sendgrid_fake: FakeSendGrid
) -> None:
    rules = make_rules(tmp_path)
    ledger = tmp_path / "ledger.db"
    spool = tmp_path / "events.jsonl"
    with serve_spool(tmp_path, sendgrid_fake, ledger) as serve:
        serve.wait_ready()
        append_events(spool, [ping(1)])
        wait_sent(ledger, keys(range(1, 2)))
        mark = serve.mark()
        rules.rename(tmp_path / "rules.gone")
        # A reload while it is gone: rejected, the last good rules stay.
        serve.signal(signal.SIGHUP)
        serve.wait_line(r"rules: reload rejected", after=mark)
        append_events(spool, [ping(2)])
        wait_sent(ledger, keys(range(1, 3)))
        # It comes back, changed: the watcher reloads it.
        mark = serve.mark()
        shutil.rmtree(tmp_path / "rules.gone")
        make_rules(tmp_path, template="d-notify-v2")
        serve.wait_line(r"rules: version \w+ in force", after=mark, timeout_s=30)
        append_events(spool, [ping(3)])
        wait_sent(ledger, keys(range(1, 4)))
        assert serve.stop() == 0
    assert_once(sendgrid_fake, keys(range(1, 4)))
    templates = [_template(sendgrid_fake, f"notify:p{n}") for n in (1, 2, 3)]
    assert templates == ["d-notify", "d-notify", "d-notify-v2"]
