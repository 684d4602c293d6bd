"""Hostile files, secrets and output (issue 12), against real files and the real processes.

A producer may write the spool's directory: it can swap ``events.jsonl`` for a symlink to the
API key file or for a FIFO, and plant a symlink where the dead letters go. A marketer or a
producer controls user ids, which reach terminals. An operator's URLs hold passwords with
``/ # ? @ %`` and spaces. Each attack is run and its outcome asserted: nothing is read or
written outside trigmail's files, serve stays up and says why on ``/healthz``, no secret and
no terminal escape is printed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fake_sendgrid import TEST_API_KEY, FakeSendGrid
from tests.ledger_helpers import make_send, put_in_state
from tests.serve_harness import (
    REPO_ROOT,
    SERVE_RULES,
    Serve,
    append_events,
    clean_env,
    ledger_status,
    sends,
    wait_for,
    write_config,
)
from trigmail import logs
from trigmail.config import RedisConfig, SpoolConfig
from trigmail.configload import load_config
from trigmail.errors import ConfigError, UnsafeFileError
from trigmail.files import open_regular
from trigmail.httpserve import ANSWER_THREADS
from trigmail.ledger import SqliteLedger
from trigmail.ledger.base import SendState
from trigmail.logs import JsonFormatter, KeyValueFormatter, clear_secrets
from trigmail.secrets import redact_url
from trigmail.sources.base import SourceItem
from trigmail.sources.spool import SpoolSource

VICTIM = b"victim file: must never change\n"
FLOOD_CONNECTIONS = 400


def ping(n: int | str) -> dict[str, Any]:
    """A ``ping`` event: the fixture rule ``notify`` sends key ``notify:p<n>`` at once."""
    return {
        "id": f"p{n}",
        "event": "ping",
        "user_id": f"u{n}",
        "email": f"u{n}@example.com",
        "user": {"first_name": f"Name{n}"},
        "properties": {"note": f"note {n}"},
    }


def files_holding(root: Path, needle: bytes, *, besides: Path) -> list[Path]:
    """Every regular file under ``root`` (``besides`` excepted) whose bytes contain ``needle``."""
    found = []
    for path in root.rglob("*"):
        if path == besides or path.is_symlink() or not path.is_file():
            continue
        if needle in path.read_bytes():
            found.append(path)
    return found


def replace_with_symlink(path: Path, target: Path) -> None:
    """Swap ``path`` for a symlink to ``target`` in one rename, as an attacker would."""
    link = path.with_name(f".{path.name}.link")
    link.symlink_to(target)
    link.replace(path)


def replace_with_fifo(path: Path) -> None:
    fifo = path.with_name(f".{path.name}.fifo")
    os.mkfifo(fifo)
    fifo.replace(path)


def healthz_says(serve: Serve, words: str) -> str | None:
    status, body = serve.get("/healthz")
    return body if status == 503 and words in body else None


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The SendGrid API key, 0600, as a real deployment keeps it."""
    path = tmp_path / "secrets" / "sendgrid-api-key"
    path.parent.mkdir()
    path.write_text(TEST_API_KEY + "\n")
    path.chmod(0o600)
    return path


def spool_serve(
    root: Path,
    fake: FakeSendGrid,
    key_file: Path,
    *,
    spool: Path | None = None,
    dead_letters: Path | None = None,
) -> Serve:
    """A serve on ``spool`` (``root/events.jsonl``) whose API key is read from ``key_file``."""
    rules = root / "rules"
    if not rules.exists():
        shutil.copytree(SERVE_RULES, rules)
    source: dict[str, Any] = {"spool": str(spool or root / "events.jsonl")}
    if dead_letters is not None:
        source["dead_letters"] = str(dead_letters)
    config = write_config(
        root / "config.yaml",
        fake_url=fake.url,
        source=source,
        rules_dir=rules,
        ledger=root / "ledger.db",
        sendgrid={"api_key_file": str(key_file)},
    )
    return Serve(root, ["--config", str(config), "--metrics-listen", "127.0.0.1:0"], clean_env())


def dead_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def sent(ledger: Path, key: str) -> bool:
    found = sends(ledger).get(key)
    return found is not None and found.state is SendState.SENT


# -- the spool swapped for a symlink or a FIFO ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("swap", ["symlink", "fifo"])
@pytest.mark.parametrize("when", ["at start", "while running"])
def test_serve_refuses_a_swapped_spool_and_stays_up(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, key_file: Path, swap: str, when: str
) -> None:
    spool = tmp_path / "events.jsonl"
    ledger = tmp_path / "ledger.db"
    words = "symbolic link" if swap == "symlink" else "a FIFO"

    def attack() -> None:
        if swap == "symlink":
            replace_with_symlink(spool, key_file)
        else:
            replace_with_fifo(spool)

    if when == "at start":
        spool.touch()
        attack()
    else:
        append_events(spool, [ping(1)])
    with spool_serve(tmp_path, sendgrid_fake, key_file) as serve:
        serve.wait_line(r"serve: ready")
        if when == "while running":
            wait_for(lambda: sent(ledger, "notify:p1"), "the event before the attack to be sent")
            attack()
        # Refused, reported, and serve stays up: /healthz names the reason.
        reason = wait_for(lambda: healthz_says(serve, words), f"/healthz to say {words!r}")
        assert "spool not read" in reason
        assert serve.proc.poll() is None
        serve.wait_line(r"level=error .*spool .*not read: .*" + words)
        # A regular file put back is read again, and /healthz recovers.
        spool.unlink()
        append_events(spool, [ping(2)])
        wait_for(lambda: sent(ledger, "notify:p2"), "the event after the repair to be sent")
        wait_for(lambda: serve.get("/healthz")[0] == 200, "/healthz to be 200 again")
        # SIGTERM is obeyed: no open() ever blocked on the FIFO.
        assert serve.stop() == 0
    secret = TEST_API_KEY.encode()
    assert files_holding(tmp_path, secret, besides=key_file) == []
    assert TEST_API_KEY not in serve.stderr
    assert serve.stderr.count("not read:") == 1  # logged once, not at every poll


LATER_RULE = """\
rules:
  - id: later
    on: later
    delay: 3s
    send:
      template: d-later
"""
NEW_RULE = """\
rules:
  - id: added
    on: added
    send:
      template: d-added
"""


def reloads_succeeded(serve: Serve) -> float:
    _, text = serve.get("/metrics")
    prefix = 'trigmail_rule_reloads_total{result="success"} '
    return next(
        float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)
    )


@pytest.mark.slow
def test_due_sends_and_reloads_go_on_while_the_spool_is_refused(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, key_file: Path
) -> None:
    spool = tmp_path / "events.jsonl"
    ledger = tmp_path / "ledger.db"
    shutil.copytree(SERVE_RULES, tmp_path / "rules")
    (tmp_path / "rules" / "later.yaml").write_text(LATER_RULE)
    later = {"id": "l1", "event": "later", "user_id": "u1", "email": "u1@example.com"}
    append_events(spool, [later])
    with spool_serve(tmp_path, sendgrid_fake, key_file) as serve:
        serve.wait_ready()
        wait_for(lambda: any(k.startswith("later:") for k in sends(ledger)), "the later send")
        replace_with_symlink(spool, key_file)
        wait_for(lambda: healthz_says(serve, "symbolic link"), "/healthz to say why")
        reloads = reloads_succeeded(serve)
        (tmp_path / "rules" / "added.yaml").write_text(NEW_RULE)
        wait_for(lambda: reloads_succeeded(serve) > reloads, "the new rule to be loaded")
        [key] = [k for k in sends(ledger) if k.startswith("later:")]
        wait_for(lambda: sent(ledger, key), "the delayed send to go out meanwhile")
        assert healthz_says(serve, "symbolic link")
        assert serve.stop() == 0
    assert files_holding(tmp_path, TEST_API_KEY.encode(), besides=key_file) == []


def test_a_symlinked_spool_is_never_read(tmp_path: Path, key_file: Path) -> None:
    # The bug: the key file's line was set aside as invalid JSON, its raw text (the key) copied
    # into the dead-letter file.
    spool = tmp_path / "events.jsonl"
    spool.symlink_to(key_file)
    source = SpoolSource(spool, poll_s=0.01)
    source.start(None)
    assert source.read(10, 0.05) == []
    assert "is a symbolic link" in (source.health() or "")
    assert not source.dead_path.exists()
    source.close()


def test_opening_a_fifo_spool_never_blocks(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    os.mkfifo(spool)
    source = SpoolSource(spool, poll_s=0.01)
    # Without O_NONBLOCK, open() of a FIFO waits for a writer for ever: run it aside.
    opened = threading.Thread(target=source.start, args=(None,), daemon=True)
    opened.start()
    opened.join(timeout=10)
    assert not opened.is_alive(), "open() blocked on the FIFO"
    assert source.read(10, 0.0) == []
    assert "is a FIFO, not a regular file" in (source.health() or "")
    source.close()


# -- what open_regular refuses ------------------------------------------------------------------


def make_unsafe(path: Path, kind: str, elsewhere: Path) -> None:
    if kind == "symlink":
        path.symlink_to(elsewhere)
    elif kind == "dangling symlink":
        path.symlink_to(elsewhere / "planted")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "fifo", "directory", "socket"])
@pytest.mark.parametrize("mode", ["read", "append"])
def test_open_regular_refuses_what_is_not_a_regular_file(
    tmp_path: Path, kind: str, mode: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret").write_bytes(VICTIM)
    target = elsewhere / "secret" if kind == "symlink" else elsewhere
    path = tmp_path / "events.dead.jsonl"
    make_unsafe(path, kind, target)
    flags = os.O_RDONLY if mode == "read" else os.O_WRONLY | os.O_APPEND
    with pytest.raises(UnsafeFileError, match="refused"):
        os.close(open_regular(path, flags, create=mode == "append"))
    # Nothing was created or changed on the other side of a link.
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret"]
    assert (elsewhere / "secret").read_bytes() == VICTIM


# -- the dead-letter file swapped for a symlink ---------------------------------------------------


def test_a_symlinked_dead_letter_file_is_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    spool = tmp_path / "events.jsonl"
    spool.touch()
    spool.with_name("events.dead.jsonl").symlink_to(victim)
    source = SpoolSource(spool)
    source.start(None)
    # Not raised: the letter is in the ledger already, and the batch must still be acknowledged.
    source.dead_letter(SourceItem(b"{bad", "p", "events.jsonl:1"), "invalid_json", "x")
    assert victim.read_bytes() == VICTIM
    assert "is a symbolic link" in (source.health() or "")
    # A regular file put back is written again, and the problem is gone.
    spool.with_name("events.dead.jsonl").unlink()
    source.dead_letter(SourceItem(b"{bad", "p", "events.jsonl:2"), "invalid_json", "x")
    assert source.health() is None
    assert json.loads(source.dead_path.read_text())["ref"] == "events.jsonl:2"
    source.close()


@pytest.mark.parametrize(("mode", "warned"), [(0o2770, True), (0o750, False)])
def test_dead_letters_in_a_directory_others_may_write_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    spool_dir.chmod(mode)
    source = SpoolSource(spool_dir / "events.jsonl")
    with caplog.at_level(logging.WARNING, logger="trigmail.sources.deadletters"):
        source.start(None)
    source.close()
    assert ("in a directory others may write" in caplog.text) is warned


@pytest.mark.slow
def test_serve_keeps_dead_letters_in_the_ledger_when_their_file_is_a_symlink(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, key_file: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    (tmp_path / "events.dead.jsonl").symlink_to(victim)
    spool = tmp_path / "events.jsonl"
    append_events(spool, ["{not json", ping(1)])
    with spool_serve(tmp_path, sendgrid_fake, key_file) as serve:
        serve.wait_line(r"serve: ready")
        # The good event around the bad one goes out; the bad one is set aside in the ledger.
        wait_for(lambda: sent(tmp_path / "ledger.db", "notify:p1"), "the good event to be sent")
        wait_for(lambda: healthz_says(serve, "dead letters not written"), "/healthz to say why")
        assert ledger_status(tmp_path / "ledger.db")["dead_letters"] == 1
        assert serve.proc.poll() is None
        assert serve.stop() == 0
    assert victim.read_bytes() == VICTIM


@pytest.mark.slow
def test_dead_letters_go_where_the_config_says(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, key_file: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    spool = tmp_path / "spool" / "events.jsonl"
    spool.parent.mkdir()
    append_events(spool, ["{not json", ping(1)])
    dead = state / "events.dead.jsonl"
    with spool_serve(tmp_path, sendgrid_fake, key_file, spool=spool, dead_letters=dead) as serve:
        serve.wait_line(r"serve: ready")
        letters = wait_for(lambda: dead_lines(dead), "the dead letter in the state directory")
        assert serve.stop() == 0
    assert [json.loads(line)["reason"] for line in letters] == ["invalid_json"]
    assert not (spool.parent / "events.dead.jsonl").exists()


@pytest.mark.parametrize(
    ("document", "environ", "flag", "expected"),
    [
        # beside the spool by default
        ("source: {spool: /s/e.jsonl}\n", {}, None, None),
        # the config file's key
        ("source: {spool: /s/e.jsonl, dead_letters: /d/x.jsonl}\n", {}, None, "/d/x.jsonl"),
        # the environment (the unit's), kept when a flag replaces the spool
        ("", {"TRIGMAIL_DEAD_LETTERS": "/d/y.jsonl"}, "/s/f.jsonl", "/d/y.jsonl"),
        # and refining a spool the file names
        (
            "source: {spool: /s/e.jsonl}\n",
            {"TRIGMAIL_DEAD_LETTERS": "/d/z.jsonl"},
            None,
            "/d/z.jsonl",
        ),
    ],
)
def test_where_dead_letters_go_is_configurable(
    tmp_path: Path, document: str, environ: dict[str, str], flag: str | None, expected: str | None
) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(document)
    config = load_config(config_file, environ, {("source", "spool"): flag})
    assert isinstance(config.source, SpoolConfig)
    assert config.source.dead_letters == (None if expected is None else Path(expected))


def test_dead_letters_belong_to_a_spool_only(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("source: {redis: {url: 'redis://h/0'}, dead_letters: /d/x.jsonl}\n")
    with pytest.raises(ConfigError, match="too many properties"):
        load_config(config_file, {})
    # The unit's environment setting is ignored by a Redis source (it has its dead stream).
    environ = {"TRIGMAIL_DEAD_LETTERS": "/d/x.jsonl", "TRIGMAIL_REDIS_URL": "redis://h/0"}
    assert isinstance(load_config(None, environ).source, RedisConfig)


# -- file modes ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_files_are_created_0640_and_directories_0750_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    # No API key: the outbox. Its group may read it (docs/security.md), others nothing.
    shutil.copytree(SERVE_RULES, tmp_path / "rules")
    spool = tmp_path / "events.jsonl"
    append_events(spool, ["{not json", ping(1)])
    args = [
        "--spool",
        str(spool),
        "--rules",
        str(tmp_path / "rules"),
        "--ledger",
        str(tmp_path / "state" / "ledger.db"),
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    env = clean_env({"TRIGMAIL_OUTBOX": str(tmp_path / "out" / "box")})
    serve = Serve(tmp_path, args, env)
    serve.command = ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *serve.command]
    with serve:
        serve.wait_ready()
        outbox = tmp_path / "out" / "box"
        wait_for(lambda: list(outbox.glob("*.json")), "the email in the outbox")
        wait_for((tmp_path / "events.dead.jsonl").exists, "the dead letter")
        modes = {
            path.relative_to(tmp_path).as_posix(): stat.S_IMODE(path.stat().st_mode)
            for path in [
                tmp_path / "state",
                *tmp_path.joinpath("state").glob("ledger.db*"),
                tmp_path / "out",
                outbox,
                *outbox.glob("*.json"),
                tmp_path / "events.dead.jsonl",
            ]
            # The lock file is 0600 on purpose; a temporary email is renamed away at once.
            if not path.name.endswith(".lock") and not path.name.startswith(".tmp-")
        }
        assert serve.stop() == 0
    expected = {name: 0o750 if name in ("state", "out", "out/box") else 0o640 for name in modes}
    assert {n: oct(m) for n, m in modes.items()} == {n: oct(m) for n, m in expected.items()}
    assert {"state/ledger.db", "state/ledger.db-wal", "events.dead.jsonl"} <= modes.keys()


# -- the metrics listener -----------------------------------------------------------------------


def threads_of(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


@pytest.fixture
def flood() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


@pytest.mark.slow
def test_slowloris_neither_adds_threads_nor_blocks_healthz(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, key_file: Path, flood: list[socket.socket]
) -> None:
    with spool_serve(tmp_path, sendgrid_fake, key_file) as serve:
        serve.wait_ready()
        port = serve.metrics_port()
        assert port is not None
        assert serve.get("/metrics")[0] == 200
        before = threads_of(serve.proc.pid)
        for _ in range(FLOOD_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
            flood.append(sock)
        # Each connection is accepted; the probe still gets its answer.
        assert serve.get("/healthz") == (200, "ok\n")
        assert threads_of(serve.proc.pid) <= before + ANSWER_THREADS
        # Garbage and abrupt closes are one log line at most, never a traceback.
        for garbage in (b"\x00\x01\x02 nonsense\r\n\r\n", b"GET / HTTP/1.1\r\n" + b"A" * 20000):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(garbage)
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1024)
        assert serve.get("/healthz")[0] == 200
        assert serve.stop() == 0
    assert not [line for line in serve.lines if line.startswith(("Traceback", "  File "))]


# -- passwords with special characters ------------------------------------------------------------

SPECIALS = ["/", "#", "?", "@", "%", " ", "%40"]


def password_with(special: str) -> str:
    return f"s3cr{special}t-Pw{special}9q"


@pytest.fixture
def guard() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


@pytest.mark.parametrize("special", SPECIALS)
def test_url_passwords_never_print(special: str, guard: None, tmp_path: Path) -> None:
    password = password_with(special)
    url = f"redis://app:{password}@redis.internal:6379/0"
    dsn = f"postgresql://trig:{password}@db.internal:5432/trigmail"
    config = load_config(environ={"TRIGMAIL_REDIS_URL": url, "TRIGMAIL_LEDGER": dsn})
    shown = [repr(config), repr(config.source), json.dumps(config.describe()), redact_url(url)]
    # Through the log guard: a message, an exception's text and its traceback.
    try:
        raise ConnectionError(f"cannot connect to {url} ({dsn}) with {password}")
    except ConnectionError:
        record = logging.LogRecord(
            "trigmail.x", logging.ERROR, __file__, 1, "failed: %s", (url,), sys.exc_info()
        )
    shown += [KeyValueFormatter().format(record), JsonFormatter().format(record)]
    for text in shown:
        assert password not in text, text
        assert "<secret>" in text
    assert "app:<secret>@redis.internal" in repr(config.source)


def test_an_unparsable_url_is_redacted_from_the_scheme_to_the_last_at() -> None:
    assert redact_url("redis://a/b:c#d?e@f@host:1/0") == "redis://<secret>@host:1/0"
    assert redact_url("redis://:pa ss@[::1:6379") == "redis://:<secret>@[::1:6379"


@pytest.mark.slow
def test_serve_prints_no_password_of_a_redis_url_or_a_dsn(tmp_path: Path) -> None:
    password = "p/a#s?s@w%o rd-7Hq"
    shutil.copytree(SERVE_RULES, tmp_path / "rules")
    # Port 1: nothing listens there; the URL cannot even be parsed by redis-py.
    args = [
        "--redis-url",
        f"redis://:{password}@127.0.0.1:1/0",
        "--rules",
        str(tmp_path / "rules"),
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    with Serve(tmp_path, args, clean_env()) as serve:
        start = serve.wait_line(r"serve: starting.*").group(0)
        assert "source.redis=redis://:<secret>@127.0.0.1:1/0 " in start
        serve.wait_line(r"level=(warning|error|critical) .*redis://:<secret>@127\.0\.0\.1:1")
        serve.kill()
    dsn = f"postgresql://postgres:{password}@127.0.0.1:1/x"
    status = subprocess.run(
        [sys.executable, "-m", "trigmail", "status", "--ledger", dsn],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert status.returncode == 1
    for output in (serve.stderr, status.stdout, status.stderr):
        for piece in (password, "s@w%o rd-7Hq", "p/a#s"):
            assert piece not in output, output
    assert "<secret>" in status.stderr
    # One line per record: the uncaught error's traceback too.
    assert not [line for line in serve.lines if line.startswith(("Traceback", "  File "))]


@pytest.mark.parametrize("where", ["main", "thread"])
def test_an_uncaught_error_is_one_log_line_without_the_password(tmp_path: Path, where: str) -> None:
    password = "p/a#s?s@w%o rd-7Hq"
    fail = "raise RuntimeError('lost ' + url + '\\nsecond line')"
    script = (
        "import threading\n"
        "from trigmail.cli.common import setup_logging\n"
        "from trigmail.configload import load_config\n"
        "setup_logging('text', 'INFO')\n"
        f"url = {f'redis://:{password}@h:1/0'!r}\n"
        "load_config(environ={'TRIGMAIL_REDIS_URL': url})\n"
        "def fail():\n"
        f"    {fail}\n"
        + ("fail()\n" if where == "main" else "t = threading.Thread(target=fail)\n")
        + ("" if where == "main" else "t.start(); t.join(); raise SystemExit(1)\n")
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "level=critical" in lines[0] and "uncaught RuntimeError" in lines[0]
    assert ("in thread" in lines[0]) is (where == "thread")
    assert password not in done.stderr


# -- terminal escapes from events -----------------------------------------------------------------

HOSTILE_USER = "u\x1b]0;pwned\x07\x1b[2J\u2028\x9b31m\u202eevil"
RAW_CONTROLS = ("\x1b", "\x07", "\u2028", "\x9b", "\u202e")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "250", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "trigmail", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_status_and_ledger_tables_escape_terminal_controls(tmp_path: Path, t0: datetime) -> None:
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    try:
        send = make_send("cart:1", t0, user=HOSTILE_USER)
        put_in_state(ledger, send, SendState.SCHEDULED, t0)
        with ledger.transaction() as txn:
            assert txn.claim([send.key], t0)
            txn.finish([send.key], SendState.IN_DOUBT, t0, error="timeout \x1b[31mred")
    finally:
        ledger.close()
    for result in (
        run_cli("status", "--ledger", str(path), cwd=tmp_path),
        run_cli("ledger", "in-doubt", "--ledger", str(path), cwd=tmp_path),
    ):
        assert result.returncode == 0, result.stderr
        for control in RAW_CONTROLS:
            assert control not in result.stdout
        assert "u\\x1b]0;pwned\\x07\\x1b[2J\\u2028\\x9b31m\\u202eevil" in result.stdout
        assert "timeout \\x1b[31mred" in result.stdout


def test_simulate_escapes_terminal_controls(tmp_path: Path) -> None:
    event = ping(1) | {"user_id": HOSTILE_USER}
    events = tmp_path / "events.jsonl"
    append_events(events, [event, "{bad \x1b[2J json"])
    result = run_cli("simulate", str(events), "--rules", str(SERVE_RULES), "--strict", cwd=tmp_path)
    assert result.returncode == 1  # the bad line was set aside, and --strict says so
    for control in RAW_CONTROLS:
        assert control not in result.stdout
    assert "\\x1b]0;pwned\\x07" in result.stdout
    assert "\\x1b[2J" in result.stdout


@pytest.mark.parametrize("formatter", [KeyValueFormatter(), JsonFormatter()])
def test_log_lines_escape_terminal_controls(formatter: logging.Formatter) -> None:
    record = logging.LogRecord(
        "trigmail.x", logging.INFO, __file__, 1, "send %s", (HOSTILE_USER,), None
    )
    line = formatter.format(record)
    for control in (*RAW_CONTROLS, "\n", "\r"):
        assert control not in line
    if isinstance(formatter, JsonFormatter):
        assert json.loads(line)["msg"] == f"send {HOSTILE_USER}"  # still exact JSON
    assert logs.escape_controls("a\u2029b\x85c") == "a\\u2029b\\x85c"
