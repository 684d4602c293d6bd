"""What every command shares: config loading, logging set-up, error reporting."""

from __future__ import annotations

import logging.config
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from trigmail.cli.app import EXIT_INVALID, OutputFormat
from trigmail.config import Config
from trigmail.configload import load_config
from trigmail.decisions import Outcome
from trigmail.errors import ConfigError
from trigmail.events import parse_ts
from trigmail.logs import escape_controls, install_excepthooks, logging_config, redact
from trigmail.rules.quoting import cut
from trigmail.secrets import redact_url

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (YAML). Default: $TRIGMAIL_CONFIG, else the embedded defaults.",
        show_default=False,
        exists=True,
        dir_okay=False,
    ),
]
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        help="Ledger to use (default: the config's, else ./trigmail.db).",
        show_default=False,
    ),
]
FormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="table for people, json for scripts.")
]

# How each outcome is coloured wherever decisions are listed (simulate, explain).
OUTCOME_STYLE: dict[Outcome, str] = {
    Outcome.SCHEDULED: "cyan",
    Outcome.SENT: "green",
    Outcome.CANCELLED: "yellow",
    Outcome.SKIPPED: "dim",
    Outcome.DROPPED: "magenta",
    Outcome.DEAD_LETTER: "red",
    Outcome.FAILED: "red",
    Outcome.IN_DOUBT: "magenta",
}

err_console = Console(stderr=True, highlight=False)


def parse_time_option(value: str | None) -> datetime | None:
    """An RFC 3339 option value (``--until``, ``--since``), or a usage error naming it."""
    if value is None:
        return None
    try:
        return parse_ts(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an RFC 3339 time") from None


def fail(message: str, code: int = EXIT_INVALID) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``.

    Printed without the log guard's handler, so passwords are redacted here: registered ones,
    and any URL's (a config error quoting an invalid URL comes before it is registered).
    """
    shown = "\n".join(redact_url(line) for line in redact(message).split("\n"))
    err_console.print(
        f"[bold red]error:[/bold red] {escape(escape_controls_keeping_lines(shown))}",
        markup=True,
        soft_wrap=True,
    )
    raise typer.Exit(code)


def escape_controls_keeping_lines(text: str) -> str:
    """:func:`~trigmail.logs.escape_controls` line by line: a list of problems keeps its lines."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


def load(
    config_path: Path | None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
) -> Config:
    """Load the config, or exit 1 with every problem (one line on stderr, no traceback).

    No key is read: a command that sends resolves its provider itself.
    """
    try:
        return load_config(config_path, overrides=overrides)
    except ConfigError as exc:
        fail(str(exc))
    # The config is input: whatever it makes go wrong is reported as such, never as a crash.
    except Exception as exc:
        where = "" if config_path is None else f"{config_path}: "
        fail(f"{where}cannot load the config: {type(exc).__name__}: {cut(str(exc))}")


def require_ledger(target: str) -> None:
    """Exit 1 when ``target`` names a SQLite file that does not exist.

    Opening a SQLite path creates it: a typo must not make an empty ledger that shows nothing.
    """
    if "://" not in target and target not in (":memory:", "memory") and not Path(target).exists():
        fail(f"no ledger at {target} (has `trigmail serve` run here? use --ledger or --config)")


def setup_logging(fmt: str, level: str) -> None:
    """Send logs to stderr in ``fmt`` (text or json); colour only on a terminal."""
    try:
        config = logging_config(
            "json" if fmt == "json" else "text", level, stream_is_tty=sys.stderr.isatty()
        )
    except ConfigError as exc:
        fail(str(exc))
    logging.config.dictConfig(config)
    install_excepthooks()
