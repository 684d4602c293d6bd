"""The typer application every command module registers on."""

from __future__ import annotations

from enum import StrEnum

import typer

app = typer.Typer(
    name="trigmail",
    help=(
        "Send the right email at the right moment, and never twice.\n\n"
        "Marketing checks rules with `validate`, proves them with `test`, looks at one "
        "email with `preview` and asks `explain` why someone got an email or not; engineers "
        "dry-run them with `simulate`, ops run `serve` and look at `status`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class OutputFormat(StrEnum):
    """How a command prints its result."""

    TABLE = "table"
    JSON = "json"


# Exit codes fixed by docs/design.md §4 (typer itself exits 2 on a usage error).
EXIT_OK = 0
EXIT_INVALID = 1
