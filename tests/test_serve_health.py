"""Health that tells the truth and reloads that say what happened, on a real `trigmail serve`."""

from __future__ import annotations

import shutil
import signal
import sqlite3
from pathlib import Path

from tests.serve_harness import SERVE_RULES, Serve, append_events, clean_env, wait_for

# A rule that cancels on its own trigger: valid, with one lint warning.
WARNED_RULE = """\
rules:
  - id: warned
    on: pong
    cancel_on: [pong]
    send: {template: d-warned}
"""


def _serve(root: Path, spool: Path) -> Serve:
    if not (root / "rules").exists():
        shutil.copytree(SERVE_RULES, root / "rules")
    env = clean_env(
        {
            "TRIGMAIL_METRICS_LISTEN": "127.0.0.1:0",
            "TRIGMAIL_SPOOL": str(spool),
            "TRIGMAIL_RULES_DIR": str(root / "rules"),
        }
    )
    return Serve(root, [], env)


def test_a_spool_directory_that_goes_away_is_unhealthy_with_the_reason(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    with _serve(tmp_path, spool_dir / "events.jsonl") as serve:
        serve.wait_ready()
        # Ready is published by the loop's first turn, which may come after the log line.
        wait_for(lambda: serve.get("/readyz") == (200, "ok\n"), "/readyz to say ok")
        spool_dir.rmdir()
        status, body = serve.get("/healthz")
        assert status == 503
        assert f"its directory {spool_dir} does not exist" in body
        assert serve.get("/readyz")[0] == 503
        spool_dir.mkdir()
        wait_for(lambda: serve.get("/healthz")[0] == 200, "/healthz to recover")
        assert serve.stop() == 0


def _error_lines(serve: Serve, after: int) -> list[str]:
    return [line for line in serve.lines[after:] if "level=error" in line]


def test_reloads_say_what_changed_and_log_causes_and_warnings_once(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    serve = _serve(tmp_path, spool)
    rules = tmp_path / "rules"
    (rules / "warned.yaml").write_text(WARNED_RULE, encoding="utf-8")
    notify = rules / "notify.yaml"
    original = notify.read_text(encoding="utf-8")
    with serve:
        serve.wait_ready()
        warning = r"level=warning .*warned\.yaml:\d+:\d+: warning"
        serve.wait_line(warning)
        assert serve.metric("trigmail_rules_last_reload_successful") == 1

        # A valid edit of one rule: the log names the file and the rule.
        mark = serve.mark()
        notify.write_text(original.replace("d-notify", "d-notify-v2"), encoding="utf-8")
        line = serve.wait_line(r"rules: version \w+ in force.*", after=mark).group(0)
        assert f"files={notify}" in line
        assert "added=- removed=- changed=notify" in line

        # An invalid edit: each cause at error, with its position.
        mark = serve.mark()
        notify.write_text(original.replace("on: ping", "on: [ping"), encoding="utf-8")
        serve.wait_line(r"rules: reload rejected \(\d+ errors?\)", after=mark)
        causes = [line for line in _error_lines(serve, mark) if "notify.yaml:" in line]
        assert causes, serve.stderr

        # The same rejected files again: the summary only, the causes are not repeated.
        mark = serve.mark()
        serve.signal(signal.SIGHUP)
        serve.wait_line(r"the same as logged before", after=mark)
        assert not [line for line in _error_lines(serve, mark) if "notify.yaml:" in line]

        # Fixed (back to the first version), then reloaded with nothing changed: neither
        # logs the warnings of a version already seen.
        mark = serve.mark()
        notify.write_text(original, encoding="utf-8")
        serve.wait_line(r"rules: version \w+ in force.*changed=notify", after=mark)
        mark = serve.mark()
        serve.signal(signal.SIGHUP)
        serve.wait_line(
            r"rules: version \w+ in force.*files=- added=- removed=- changed=-", after=mark
        )
        assert serve.stop() == 0
    warnings = [line for line in serve.lines if "warned.yaml" in line and "warning" in line]
    # Once for the first version and once for v2; not for the first version again, nor for
    # the reload that changed nothing.
    assert len(warnings) == 2, warnings


def test_readyz_waits_for_the_start_and_healthz_names_a_ledger_that_cannot_commit(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "events.jsonl"
    ledger = tmp_path / "trigmail.db"
    with _serve(tmp_path, spool) as serve:
        serve.wait_ready()
        assert serve.stop() == 0
    # Another process holds the ledger's write lock: the start cannot settle its sends.
    lock = sqlite3.connect(ledger, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        with _serve(tmp_path, spool) as serve:
            wait_for(serve.metrics_port, "the metrics server")
            assert serve.get("/readyz") == (503, "starting\n")
            lock.execute("ROLLBACK")
            serve.wait_ready()
            assert serve.get("/readyz") == (200, "ok\n")
            # Locked again while an event waits to be committed.
            lock.execute("BEGIN EXCLUSIVE")
            append_events(spool, [{"event": "ping", "user_id": "u1", "email": "u1@x.example"}])

            def unhealthy() -> str | None:
                status, body = serve.get("/healthz")
                return body if status == 503 else None

            body = wait_for(unhealthy, "/healthz to say the ledger cannot commit")
            assert "the ledger cannot commit" in body
            lock.execute("ROLLBACK")
            wait_for(lambda: serve.get("/healthz")[0] == 200, "/healthz to recover")
            assert serve.stop() == 0
    finally:
        lock.close()
