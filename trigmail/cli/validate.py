"""`trigmail validate`: check rule files the way the daemon loads them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from trigmail.cli.app import EXIT_INVALID, EXIT_OK, OutputFormat, app
from trigmail.durations import parse_duration
from trigmail.errors import DurationError
from trigmail.logs import escape_controls
from trigmail.rules.loader import ParseResult, Problem, Severity, load_rules

DEFAULT_RULES_DIR = Path("rules.d")
_STYLES = {Severity.ERROR: "bold red", Severity.WARNING: "yellow"}


def _retention_s(value: str) -> int:
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise typer.BadParameter(str(exc)) from None


def _strict(problems: list[Problem]) -> list[Problem]:
    return [dataclasses.replace(p, severity=Severity.ERROR) for p in problems]


def _summary(result: ParseResult, problems: list[Problem]) -> str:
    errors = sum(1 for p in problems if p.severity is Severity.ERROR)
    warnings = len(problems) - errors
    return (
        f"{result.files} {'file' if result.files == 1 else 'files'}, "
        f"{result.rules_written} {'rule' if result.rules_written == 1 else 'rules'}: "
        f"{errors} {'error' if errors == 1 else 'errors'}, "
        f"{warnings} {'warning' if warnings == 1 else 'warnings'}"
    )


def _print_table(result: ParseResult, problems: list[Problem]) -> None:
    # rich decides colour: none when stdout is not a terminal or NO_COLOR is set.
    console = Console(highlight=False, soft_wrap=True)
    for problem in problems:
        line = Text(f"{problem.file}:{problem.line}:{problem.col}: ")
        line.append(str(problem.severity), style=_STYLES[problem.severity])
        # A message may quote the rule file, which may hold terminal escapes.
        line.append(f": {escape_controls(problem.message)}")
        if problem.path:
            line.append(f" (at {escape_controls(str(problem.path))})", style="dim")
        console.print(line)
    console.print(Text(_summary(result, problems), style="bold"))


@app.command()
def validate(
    dirs: Annotated[
        list[Path] | None,
        typer.Argument(help="Rule directories (or files).", show_default="./rules.d"),
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table for people, json for scripts.")
    ] = OutputFormat.TABLE,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    retention: Annotated[
        str, typer.Option(help="How long the ledger keeps sends (a longer cooldown warns).")
    ] = "90d",
) -> None:
    """Check rule files: every problem as file:line:col, exit 0 when valid, 1 when not."""
    retention_s = _retention_s(retention)
    result = load_rules(*(dirs or [DEFAULT_RULES_DIR]), retention_s=retention_s)
    problems = _strict(result.problems) if strict else result.problems
    if output is OutputFormat.JSON:
        typer.echo(json.dumps([p.to_json() for p in problems], indent=2))
    else:
        _print_table(result, problems)
    invalid = any(p.severity is Severity.ERROR for p in problems)
    raise typer.Exit(EXIT_INVALID if invalid else EXIT_OK)
