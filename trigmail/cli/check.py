"""`trigmail check`: the config and its rules, every problem in one run, no side effect."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from trigmail.cli.app import EXIT_INVALID, EXIT_OK, OutputFormat, app
from trigmail.cli.common import ConfigOption
from trigmail.configcheck import ConfigReport, check_config
from trigmail.logs import escape_controls
from trigmail.probes import Verdict
from trigmail.rules.problems import Problem, Severity

_STYLES = {Severity.ERROR: "bold red", Severity.WARNING: "yellow"}


def problem_line(problem: Problem) -> Text:
    """``file:line:col: severity: key: message``; the position is left out when unknown."""
    where = problem.file if problem.line == 0 else f"{problem.file}:{problem.line}:{problem.col}"
    line = Text(f"{escape_controls(where)}: ")
    line.append(str(problem.severity), style=_STYLES[problem.severity])
    key = f"{escape_controls(problem.path)}: " if problem.path else ""
    line.append(f": {key}{escape_controls(problem.message)}")
    return line


def _print_table(report: ConfigReport, verdicts: list[Verdict]) -> None:
    console = Console(highlight=False, soft_wrap=True)
    for problem in report.problems:
        console.print(problem_line(problem))
    for verdict in verdicts:
        line = Text(f"{escape_controls(verdict.target)}: ")
        line.append("ok" if verdict.ok else "FAILED", style="green" if verdict.ok else "bold red")
        line.append(f": {escape_controls(verdict.detail)}")
        console.print(line)
    warnings = len(report.problems) - report.errors
    failed = sum(1 for v in verdicts if not v.ok)
    summary = f"{report.errors} errors, {warnings} warnings"
    if verdicts:
        summary += f", {len(verdicts) - failed} of {len(verdicts)} connections ok"
    console.print(Text(summary, style="bold"))


@app.command()
def check(
    config_path: ConfigOption = None,
    connect: Annotated[
        bool,
        typer.Option(
            "--connect", help="Also reach the ledger, Redis and SendGrid (changing nothing)."
        ),
    ] = False,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table for people, json for scripts.")
    ] = OutputFormat.TABLE,
) -> None:
    """Check the config and the rules it names: every problem as file:line:col with its key.

    Creates, migrates and binds nothing, so it is safe before a start (the shipped systemd
    unit runs it as ExecStartPre). With --connect it also connects to the ledger (read-only),
    pings Redis and makes an authenticated request to SendGrid that sends nothing.
    Exit 0 when all is well, 1 on any error or failed connection.
    """
    report = check_config(config_path)
    verdicts: list[Verdict] = []
    if connect and report.config is not None:
        from trigmail.probes import probe_all

        verdicts = probe_all(report.config)
    if output is OutputFormat.JSON:
        document = {
            "ok": report.ok and all(v.ok for v in verdicts),
            "problems": [p.to_json() for p in report.problems],
            "connections": [v.to_json() for v in verdicts],
        }
        typer.echo(json.dumps(document, indent=2))
    else:
        _print_table(report, verdicts)
    ok = report.ok and all(v.ok for v in verdicts)
    raise typer.Exit(EXIT_OK if ok else EXIT_INVALID)
