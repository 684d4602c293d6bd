"""`trigmail preview` and `trigmail send-test`: one rule, one event, the exact SendGrid request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from trigmail.cli.app import EXIT_INVALID, EXIT_OK, OutputFormat, app
from trigmail.cli.common import ConfigOption, fail, load
from trigmail.errors import ConfigError, DeliveryError
from trigmail.events import format_ts
from trigmail.preview import PreviewError, StepPreview, preview
from trigmail.providers.credentials import SendGridAccount, resolve_provider
from trigmail.rules.loader import load_rules
from trigmail.rules.model import RuleSet

EventOption = Annotated[
    str,
    typer.Option(
        "--event",
        help="The event: a JSON object, or a file holding one (or JSON lines: the first).",
    ),
]
RulesOption = Annotated[
    Path | None, typer.Option("--rules", help="Rule directory.", show_default="./rules.d")
]


def _event(value: str) -> Any:
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"cannot read {value}: {exc.strerror}")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            return json.loads(first)
        except json.JSONDecodeError as exc:
            fail(f"the event is not JSON: {exc}")


def _rules(rules_dir: Path | None) -> RuleSet:
    loaded = load_rules(rules_dir or Path("rules.d"))
    if loaded.rules is None:
        fail("the rules are invalid: run `trigmail validate` for every problem")
    return loaded.rules


def _show(steps: list[StepPreview], as_json: bool) -> None:
    if as_json:
        for step in steps:
            typer.echo(json.dumps(step.to_json()))
        return
    console = Console(highlight=False, soft_wrap=True)
    for step in steps:
        title = f"{step.rule}" + (f" step {step.step}" if step.step else "")
        if step.request is None:
            console.print(Text(f"{title}: would not send: {step.reason} ({step.detail})"))
            continue
        when = format_ts(step.due_at) if step.due_at else "-"
        console.print(Text(f"{title}: key {step.key}, due {when} ({step.reason})", style="bold"))
        console.print(Text(json.dumps(step.request, indent=2)))


@app.command("preview")
def preview_command(
    rule: Annotated[str, typer.Argument(help="The rule id.")],
    event: EventOption,
    rules_dir: RulesOption = None,
    config_path: ConfigOption = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table for people, json (one per step).")
    ] = OutputFormat.TABLE,
) -> None:
    """Print exactly what RULE would send to SendGrid for one event; nothing is sent.

    Shows the idempotency key, when it would be due, and the request body: template id,
    rendered dynamic data, categories, unsubscribe (ASM) group and sender. Exit 1 when the
    rule would not send for this event (the reason is printed).

    Example: trigmail preview cart-recovery --event '{"event": "cart_abandoned", ...}'
    """
    config = load(config_path)
    try:
        steps = preview(rule, _event(event), _rules(rules_dir), config.sender)
    except PreviewError as exc:
        fail(str(exc))
    _show(steps, output is OutputFormat.JSON)
    raise typer.Exit(EXIT_OK if any(s.request for s in steps) else EXIT_INVALID)


@app.command("send-test")
def send_test(
    rule: Annotated[str, typer.Argument(help="The rule id.")],
    to: Annotated[str, typer.Option("--to", help="Send to this address instead.")],
    event: EventOption,
    rules_dir: RulesOption = None,
    config_path: ConfigOption = None,
    sandbox: Annotated[
        bool, typer.Option("--sandbox", help="SendGrid checks the request but delivers nothing.")
    ] = False,
) -> None:
    """Send RULE's email for one event to ADDRESS, for real, through SendGrid.

    The ledger is never read or written; the idempotency key is prefixed with `send-test:`
    so SendGrid's records and webhooks never mistake it for a real send.
    """
    config = load(config_path)
    try:
        account = resolve_provider(config)
    except ConfigError as exc:
        fail(str(exc))
    if not isinstance(account, SendGridAccount):
        fail("send-test needs a SendGrid API key (provider.sendgrid in the config)")
    try:
        steps = preview(rule, _event(event), _rules(rules_dir), config.sender, to=to)
    except PreviewError as exc:
        fail(str(exc))
    _show(steps, as_json=False)
    emails = [step.email for step in steps if step.email is not None]
    if not emails:
        fail("nothing to send: the rule would not send for this event")
    from trigmail.providers.sendgrid import SendGridProvider

    sendgrid = account.settings
    provider = SendGridProvider(
        account.api_key,
        default_from=config.sender,
        host=sendgrid.host,
        timeout_s=sendgrid.timeout_s,
        connect_timeout_s=sendgrid.connect_timeout_s,
        sandbox=sandbox,
    )
    try:
        for email in emails:
            accepted = provider.send([email])
            typer.echo(f"sent {email.key} to {email.to}: message id {accepted.message_id}")
    except DeliveryError as exc:
        fail(f"SendGrid did not take it: {exc}")
    finally:
        provider.close()
