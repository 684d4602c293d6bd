"""`trigmail serve`: the daemon (its wiring is :mod:`trigmail.service`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trigmail.cli.app import EXIT_INVALID, app
from trigmail.cli.check import problem_line
from trigmail.cli.common import ConfigOption, err_console, fail, setup_logging
from trigmail.config import Config
from trigmail.configcheck import check_config
from trigmail.errors import ConfigError, LedgerError, RulesError

_FLAGS = {
    ("source", "spool"): "--spool",
    ("source", "redis", "url"): "--redis-url",
    ("rules_dir",): "--rules",
    ("ledger",): "--ledger",
    ("metrics", "listen"): "--metrics-listen",
    ("log", "format"): "--log-format",
    ("log", "level"): "--log-level",
}


def _checked(config_path: Path | None, overrides: dict[tuple[str, ...], str | None]) -> Config:
    """The config, once `trigmail check` finds no error in it or its rules: every problem is
    reported at once, before anything is created, migrated or bound."""
    report = check_config(config_path, overrides=overrides, flag_names=_FLAGS)
    if report.config is None or not report.ok:
        for problem in report.problems:
            err_console.print(problem_line(problem), soft_wrap=True)
        fail(f"{report.errors} problems in the config or the rules (trigmail check lists them)")
    return report.config


@app.command()
def serve(
    config_path: ConfigOption = None,
    spool: Annotated[
        Path | None, typer.Option(help="Read events from this JSONL spool.", show_default=False)
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Read events from a Redis stream at this URL.", show_default=False),
    ] = None,
    rules_dir: Annotated[
        Path | None, typer.Option("--rules", help="Rule directory.", show_default=False)
    ] = None,
    ledger: Annotated[
        str | None,
        typer.Option(help="Ledger: a SQLite file or a postgresql:// URL.", show_default=False),
    ] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(help="HOST:PORT for /metrics and /healthz.", show_default=False),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(help="text (key=value) or json, one line per record.", show_default=False),
    ] = None,
    log_level: Annotated[str | None, typer.Option(show_default=False)] = None,
) -> None:
    """Run the daemon: tail events, decide, schedule and deliver, until SIGTERM or SIGINT.

    With no config at all it runs on the embedded defaults: spool ./events.jsonl, rules
    ./rules.d, ledger ./trigmail.db and, without a SendGrid API key, the outbox ./outbox/.
    Settings come from the embedded defaults, then the config file, then TRIGMAIL_*
    environment variables, then these flags. SIGHUP (systemctl reload) reloads the rules, as
    does any change to the rule files; an invalid edit keeps the last good rules in force.
    A stop lets in-flight sends finish (bounded by delivery.shutdown_timeout) and exits 0.
    """
    overrides = {
        ("source", "spool"): None if spool is None else str(spool),
        ("source", "redis", "url"): redis_url,
        ("rules_dir",): None if rules_dir is None else str(rules_dir),
        ("ledger",): ledger,
        ("metrics", "listen"): metrics_listen,
        ("log", "format"): log_format,
        ("log", "level"): log_level,
    }
    config = _checked(config_path, overrides)
    setup_logging(config.log_format, config.log_level)
    # Imported here: what only serving needs (psycopg, redis, httpx, …) stays out of the
    # other commands' start-up.
    from trigmail.service import run

    try:
        run(config)
    except RulesError as exc:
        fail(f"the rules are invalid; fix them (trigmail validate) and start again: {exc}")
    except (ConfigError, LedgerError) as exc:
        fail(str(exc), EXIT_INVALID)
