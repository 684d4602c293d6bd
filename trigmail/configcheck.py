"""``trigmail check``: every problem of a config, and of the rules it names, in one run.

:func:`~trigmail.configload.load_config` stops at the first problem past the file's structure;
this module keeps going, so an operator fixes them all at once (like ``nginx -t``), each
placed at ``file:line:col`` and named by its key. It creates, migrates and binds nothing:
``serve`` runs it before any side effect (docs/design.md §4).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trigmail import config as cfg
from trigmail import configload as load
from trigmail.errors import ConfigError, UnreadableFileError
from trigmail.providers.credentials import MISSING_SENDER, SendGridAccount, resolve_sendgrid
from trigmail.rules.files import read_text
from trigmail.rules.loader import load_rules
from trigmail.rules.problems import Problem, Severity, format_path
from trigmail.rules.schema import check_structure
from trigmail.rules.yamlsource import YamlDocument, load_document

KeyPath = tuple[str, ...]


@dataclass
class ConfigReport:
    """What :func:`check_config` found: the problems, and the config when it loads."""

    problems: list[Problem] = field(default_factory=list)
    config: cfg.Config | None = None

    @property
    def errors(self) -> int:
        return sum(1 for p in self.problems if p.severity is Severity.ERROR)

    @property
    def ok(self) -> bool:
        return self.errors == 0


@dataclass
class _Layers:
    """The merged config and, for each key, where its value was written."""

    data: dict[str, Any]
    document: YamlDocument | None
    file: Path | None
    # A key set by the environment or a flag: the variable's or the flag's name.
    origins: dict[KeyPath, str]

    def problem(self, key: KeyPath, message: str, severity: Severity = Severity.ERROR) -> Problem:
        dotted = ".".join(key)
        for depth in range(len(key), 0, -1):
            origin = self.origins.get(key[:depth])
            if origin is not None:
                return Problem(origin, 0, 0, severity, dotted, message)
        if self.document is None or self.file is None:
            return Problem("(defaults)", 0, 0, severity, dotted, message)
        mark = self.document.position(key)
        return Problem(str(self.file), mark.line, mark.col, severity, dotted, message)


def _parse(path: Path, problems: list[Problem]) -> YamlDocument | None:
    try:
        text = read_text(path)
    except UnreadableFileError as exc:
        problems.append(Problem(str(path), 0, 0, Severity.ERROR, "", f"cannot read: {exc}"))
        return None
    document = load_document(text)
    for issue in document.issues:
        where = format_path(issue.path)
        problems.append(
            Problem(
                str(path), issue.mark.line, issue.mark.col, Severity.ERROR, where, issue.message
            )
        )
    if document.issues or document.data is None:
        return document
    for finding in check_structure(document.data, load.validator()):
        mark = document.position(finding.path, key=finding.at_key)
        where = format_path(finding.path)
        problems.append(
            Problem(str(path), mark.line, mark.col, Severity.ERROR, where, finding.message)
        )
    return document


def _layers(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[KeyPath, Any],
    flag_names: Mapping[KeyPath, str],
    problems: list[Problem],
) -> _Layers:
    document = None if path is None else _parse(path, problems)
    data = {} if document is None or not isinstance(document.data, dict) else document.data
    data = copy.deepcopy(data)
    origins: dict[KeyPath, str] = {}
    for name, key_path in load.ENV_OVERRIDES.items():
        if environ.get(name):
            load.set_key(data, key_path, environ[name])
            origins[key_path] = f"${name}"
    for key_path, value in overrides.items():
        if value is not None:
            load.set_key(data, key_path, value)
            origins[key_path] = flag_names.get(key_path, "a flag")
    return _Layers(data, document, path, origins)


def _get(data: Mapping[str, Any], key: KeyPath) -> Any:
    node: Any = data
    for part in key:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _listen(value: str) -> None:
    # Imported here: prometheus-client stays out of the config's import.
    from trigmail.metrics import parse_listen

    parse_listen(value)


# Each key the config's builder checks past the schema, with the check it makes: run one by
# one so that every problem is reported, not only the first.
_VALUE_CHECKS: tuple[tuple[KeyPath, Callable[[Any], object]], ...] = (
    (("retention",), lambda v: load.duration_s(v, "retention", 0)),
    (("delivery", "max_hold"), lambda v: load.duration_s(v, "delivery.max_hold", 0)),
    (("from", "email"), lambda v: load.check_sender(str(v))),
    (("metrics", "listen"), lambda v: _listen(str(v))),
    (
        ("source", "redis", "url"),
        lambda v: load.check_url(str(v), "source.redis.url", ("redis://", "rediss://")),
    ),
)


def _strip_key(message: str, key: KeyPath) -> str:
    """``metrics.listen: expected …`` → ``expected …``: the key is printed apart."""
    return message.removeprefix(".".join(key) + ": ")


def _check_values(layers: _Layers, problems: list[Problem]) -> None:
    # Run even when the structure is wrong elsewhere, so one run reports both; a key that
    # already has a problem is not checked twice.
    flagged = {p.path for p in problems}
    for key, check in _VALUE_CHECKS:
        value = _get(layers.data, key)
        if value is None or ".".join(key) in flagged:
            continue
        try:
            check(value)
        except ConfigError as exc:
            problems.append(layers.problem(key, _strip_key(str(exc), key)))
        # A value of a type the schema refused already: reported above.
        except (TypeError, ValueError, AttributeError):
            continue


def _check_provider(layers: _Layers, environ: Mapping[str, str], problems: list[Problem]) -> None:
    # The keys are read here as serve's wiring will read them, so that a missing or unreadable
    # one is reported before the start.
    try:
        provider = resolve_sendgrid(
            load.provider_config(layers.data.get("provider") or {}), environ
        )
    except ConfigError as exc:
        problems.append(layers.problem(("provider", "sendgrid"), str(exc)))
        return
    if isinstance(provider, SendGridAccount) and _get(layers.data, ("from",)) is None:
        problems.append(layers.problem(("provider", "sendgrid"), MISSING_SENDER))


def _check_webhook_key(
    layers: _Layers, webhook: cfg.WebhookConfig | None, environ: Mapping[str, str]
) -> list[Problem]:
    if webhook is None:
        return []
    from trigmail.webhook.signature import resolve_public_key

    try:
        resolve_public_key(webhook, environ)
    except ConfigError as exc:
        names = ("public_key_credential", "public_key_file", "public_key")
        key = next((n for n in names if _get(layers.data, ("webhook", n)) is not None), None)
        return [layers.problem(("webhook",) if key is None else ("webhook", key), str(exc))]
    return []


def _check_paths(layers: _Layers, problems: list[Problem]) -> None:
    """Paths the daemon does not create: a mistyped one would look healthy and read nothing."""
    source = layers.data.get("source") or {}
    if isinstance(source, dict) and "redis" not in source:
        spool = Path(str(source.get("spool", cfg.DEFAULT_SPOOL)))
        parent = spool.absolute().parent
        if not parent.is_dir():
            message = f"the spool's directory {parent} does not exist (a typo?)"
            problems.append(layers.problem(("source", "spool"), message))
        elif not os.access(parent, os.R_OK | os.X_OK):
            message = f"the spool's directory {parent} cannot be read by this user"
            problems.append(layers.problem(("source", "spool"), message))


def _check_rules(config: cfg.Config, problems: list[Problem]) -> None:
    # load_rules reports a missing directory itself, as serve's load would.
    problems.extend(load_rules(*config.rules_dirs, retention_s=config.retention_s).problems)


def check_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[KeyPath, Any] | None = None,
    flag_names: Mapping[KeyPath, str] | None = None,
    *,
    rules: bool = True,
) -> ConfigReport:
    """Check the config built from its layers, and the rules it names, without side effects.

    Args:
        path: the config file; default ``$TRIGMAIL_CONFIG``, else none.
        environ: the environment (default ``os.environ``).
        overrides: CLI flags, as for :func:`~trigmail.configload.load_config`.
        flag_names: each override's flag, to say where a bad value came from.
        rules: also load the rules the config names.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(load.CONFIG_ENV):
        path = Path(environ[load.CONFIG_ENV])
    report = ConfigReport()
    layers = _layers(path, environ, overrides or {}, flag_names or {}, report.problems)
    load.guard_passwords(layers.data)
    structure_ok = not report.problems
    _check_values(layers, report.problems)
    if structure_ok:
        # These read whole sections, which only a well-formed config is sure to have.
        _check_provider(layers, environ, report.problems)
        _check_paths(layers, report.problems)
    report.problems.sort(key=lambda p: (p.file, p.line, p.col))
    if report.errors:
        return report
    try:
        report.config = load.load_config(path, environ, overrides)
    # Whatever the builder checks that the checks above do not (a section added later).
    except ConfigError as exc:
        report.problems.append(layers.problem((), str(exc)))
        return report
    report.problems.extend(_check_webhook_key(layers, report.config.webhook, environ))
    if rules:
        _check_rules(report.config, report.problems)
    return report
