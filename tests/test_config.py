"""Config layers: embedded defaults < file < TRIGMAIL_* environment < flags; errors with
positions; secrets never shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trigmail.config import (
    ApiKeySource,
    Config,
    OutboxConfig,
    RedisConfig,
    SendGridConfig,
    SpoolConfig,
)
from trigmail.configload import load_config, parse_config
from trigmail.errors import ConfigError
from trigmail.providers.credentials import SendGridAccount, resolve_provider
from trigmail.webhook.signature import resolve_public_key

KEY = "SG.very-secret-key-0123456789"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trigmail.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_config_at_all_gives_the_embedded_defaults() -> None:
    config = load_config(None, environ={})
    assert config.source == SpoolConfig(Path("events.jsonl"))
    assert config.rules_dirs == (Path("rules.d"),)
    assert config.ledger == "trigmail.db"
    assert resolve_provider(config, {}) == OutboxConfig(Path("outbox"))
    assert config.metrics_listen == "127.0.0.1:9464"


def test_an_api_key_in_the_environment_selects_sendgrid(tmp_path: Path) -> None:
    path = write(tmp_path, "from: {email: hello@shop.example}\n")
    environ = {"SENDGRID_API_KEY": KEY}
    provider = resolve_provider(load_config(path, environ=environ), environ)
    assert isinstance(provider, SendGridAccount)
    assert provider.api_key.reveal() == KEY


def test_parsing_reads_no_key_and_resolving_reads_each(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    data = {
        "from": {"email": "a@b.example"},
        "provider": {"sendgrid": {"api_key_file": str(missing)}},
        "webhook": {"listen": "127.0.0.1:0", "public_key_file": str(missing)},
    }
    config = parse_config(data)  # names two files that do not exist, and reads neither
    assert config.provider == SendGridConfig(key=ApiKeySource(file=missing), required=True)
    assert config.webhook is not None
    assert config.webhook.public_key_file == missing
    with pytest.raises(ConfigError, match="cannot read the SendGrid API key from"):
        resolve_provider(config, {})
    with pytest.raises(ConfigError, match=r"webhook\.public_key_file: cannot read"):
        resolve_public_key(config.webhook, {})


def test_sendgrid_without_a_sender_is_refused_when_resolved() -> None:
    config = parse_config({"provider": {"sendgrid": {}}})
    with pytest.raises(ConfigError, match=r"from\.email is required"):
        resolve_provider(config, {"SENDGRID_API_KEY": KEY})
    with pytest.raises(ConfigError, match="no API key was found"):
        resolve_provider(config, {})


@pytest.mark.parametrize(
    ("file_value", "environ", "flag", "expected"),
    [
        (None, {}, None, "trigmail.db"),  # default
        ("file.db", {}, None, "file.db"),  # the file beats the default
        ("file.db", {"TRIGMAIL_LEDGER": "env.db"}, None, "env.db"),  # env beats the file
        ("file.db", {"TRIGMAIL_LEDGER": "env.db"}, "flag.db", "flag.db"),  # a flag beats all
    ],
)
def test_layers_override_in_order(
    tmp_path: Path, file_value: str | None, environ: dict[str, str], flag: str | None, expected: str
) -> None:
    path = write(tmp_path, "" if file_value is None else f"ledger: {file_value}\n")
    config = load_config(path, environ=environ, overrides={("ledger",): flag})
    assert config.ledger == expected


def test_trigmail_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "rules_dir: [a, b]\n")
    config = load_config(None, environ={"TRIGMAIL_CONFIG": str(path)})
    assert config.rules_dirs == (Path("a"), Path("b"))
    assert config.file == path


def test_a_spool_flag_replaces_a_configured_stream(tmp_path: Path) -> None:
    path = write(tmp_path, "source: {redis: {url: 'redis://127.0.0.1:6379/0'}}\n")
    config = load_config(path, environ={}, overrides={("source", "spool"): "in.jsonl"})
    assert config.source == SpoolConfig(Path("in.jsonl"))


def test_redis_source_options(tmp_path: Path) -> None:
    text = (
        "source:\n  redis: {url: 'redis://:pw@127.0.0.1:6379/0', stream: s, group: g,"
        " consumer: c, block: 0.5, min_idle: 30, max_deliveries: 3}\n"
    )
    source = load_config(write(tmp_path, text), environ={}).source
    assert isinstance(source, RedisConfig)
    expected = ("s", "g", "c", 0.5, 30, 3)
    got = (source.stream, source.group, source.consumer, source.block_s, source.min_idle_s)
    assert (*got, source.max_deliveries) == expected


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        # an unknown key, with a suggestion
        ("ledgr: x.db\n", "1:1", "unknown key 'ledgr'"),
        # a wrong type, at its value
        ("metrics: {listen: 9464}\n", "1:19", "listen"),
        # YAML syntax, at its position
        ("source: {spool: [\n", "2:1", "YAML syntax error"),
        # duplicate keys are never silently merged
        ("ledger: a.db\nledger: b.db\n", "2:1", "ledger"),
        # an enum
        ("log: {format: xml}\n", "1:15", "format"),
    ],
)
def test_invalid_files_name_file_line_and_col(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert f"{path}:{where}:" in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        # SendGrid configured explicitly without a key: an error, not a silent outbox
        ("provider: {sendgrid: {}}\nfrom: {email: a@shop.example}\n", {}, "no API key"),
        # SendGrid needs a sender
        ("", {"SENDGRID_API_KEY": KEY}, "from.email is required"),
        # a sender must be an address
        ("from: {email: shop-without-domain}\n", {}, "not an email address"),
        # a bad duration
        ("retention: forever\n", {}, "retention"),
        # a source URL of the wrong scheme
        ("source: {redis: {url: 'http://x'}}\n", {}, "redis"),
    ],
)
def test_semantic_errors(tmp_path: Path, text: str, environ: dict[str, str], message: str) -> None:
    # Some are found when the config is built, the provider's when serve resolves it.
    with pytest.raises(ConfigError, match=message):
        resolve_provider(load_config(write(tmp_path, text), environ=environ), environ)


def test_a_key_file_is_read_and_its_newline_stripped(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    text = f"provider: {{sendgrid: {{api_key_file: {key_file}}}}}\nfrom: {{email: a@b.example}}\n"
    provider = resolve_provider(load_config(write(tmp_path, text), environ={}), {})
    assert isinstance(provider, SendGridAccount)
    assert provider.api_key.reveal() == KEY


def test_a_systemd_credential_is_read(tmp_path: Path) -> None:
    (tmp_path / "sendgrid-api-key").write_text(KEY, encoding="utf-8")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "TRIGMAIL_FROM_EMAIL": "a@b.example"}
    provider = resolve_provider(load_config(None, environ=environ), environ)
    assert isinstance(provider, SendGridAccount)
    assert provider.api_key.reveal() == KEY


def _shown(config: Config) -> list[Any]:
    return [
        repr(config),
        str(config),
        config.describe(),
        repr(config.source),
        repr(config.provider),
        repr(resolve_provider(config, {"SENDGRID_API_KEY": KEY})),
    ]


def test_secrets_never_show(tmp_path: Path) -> None:
    text = (
        "source: {redis: {url: 'redis://:redispw@127.0.0.1:6379/0'}}\n"
        "ledger: 'postgresql://trig:pgpw@127.0.0.1/db'\nfrom: {email: a@b.example}\n"
    )
    config = load_config(write(tmp_path, text), environ={"SENDGRID_API_KEY": KEY})
    for shown in map(str, _shown(config)):
        assert KEY not in shown
        assert "redispw" not in shown
        assert "pgpw" not in shown
    assert "<secret>" in repr(config.source)


def test_the_consumer_name_refines_a_configured_stream(tmp_path: Path) -> None:
    path = write(tmp_path, "source: {redis: {url: 'redis://127.0.0.1:6379/0', stream: s}}\n")
    source = load_config(path, environ={"TRIGMAIL_REDIS_CONSUMER": "worker1"}).source
    assert isinstance(source, RedisConfig)
    assert (source.consumer, source.stream) == ("worker1", "s")
