"""Wiring for ``trigmail serve``: every part built from a :class:`~trigmail.config.Config`,
then the daemon run until a stop signal.

Apart from the CLI so that the other commands never import what only serving needs
(psycopg, redis, httpx, prometheus-client): ``trigmail validate`` starts in a third of the
time.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

from trigmail.config import (
    Config,
    OutboxConfig,
    RedisConfig,
    SpoolConfig,
    WebhookConfig,
    describe_provider,
)
from trigmail.daemon import Daemon, tune_gc
from trigmail.delivery import RetryPolicy
from trigmail.errors import ConfigError, LedgerError, RulesError
from trigmail.ledger import Ledger, SqliteLedger, open_ledger
from trigmail.metrics import HealthCheck, Metrics, serve_metrics
from trigmail.providers.base import Provider
from trigmail.providers.credentials import SendGridAccount, resolve_provider
from trigmail.providers.outbox import OutboxProvider
from trigmail.providers.sendgrid import SendGridProvider
from trigmail.rules.model import OnDoubt
from trigmail.rulestore import RuleStore, RulesWatcher
from trigmail.sources.base import Source
from trigmail.sources.spool import SpoolSource
from trigmail.spoolhealth import SpoolPathHealth
from trigmail.webhook.listener import WebhookServer, serve_webhook
from trigmail.webhook.observe import WebhookMetrics
from trigmail.webhook.receiver import Receiver
from trigmail.webhook.reconcile import Reconciler
from trigmail.webhook.signature import Verifier, resolve_public_key

if TYPE_CHECKING:
    from trigmail.ledger.postgres import PostgresLedger

log = logging.getLogger("trigmail.serve")

# What a serve holds on a SQLite ledger (SqliteLedger.acquire_exclusive): its one worker.
SQLITE_WORKER_LOCK = "serve"


def _source(config: Config) -> Source:
    if isinstance(config.source, SpoolConfig):
        return SpoolSource(config.source.path, dead_letters=config.source.dead_letters)
    # Imported here, as psycopg below: a serve on a spool and SQLite starts without either.
    from trigmail.sources.redis_stream import RedisStreamSource

    redis: RedisConfig = config.source
    return RedisStreamSource(
        redis.url,
        redis.stream,
        group=redis.group,
        consumer=redis.consumer,
        block_s=redis.block_s,
        min_idle_s=redis.min_idle_s,
        max_deliveries=redis.max_deliveries,
    )


def _provider(config: Config, resolved: SendGridAccount | OutboxConfig) -> Provider:
    if isinstance(resolved, OutboxConfig):
        log.warning(
            "serve: no SendGrid API key: emails are written to %s/ and NOT sent "
            "(set SENDGRID_API_KEY or provider.sendgrid to send)",
            resolved.directory,
        )
        return OutboxProvider(resolved.directory, config.sender)
    sendgrid = resolved.settings
    return SendGridProvider(
        resolved.api_key,
        default_from=config.sender,
        host=sendgrid.host,
        timeout_s=sendgrid.timeout_s,
        connect_timeout_s=sendgrid.connect_timeout_s,
        max_connections=sendgrid.max_connections,
    )


def _rules(config: Config, metrics: Metrics) -> RuleStore:
    store = RuleStore(config.rules_dirs, config.retention_s, metrics)
    result = store.start()
    if result.rules is None:
        raise RulesError(list(result.problems))
    metrics.record_reload(True, time.time())
    log.info("rules: version %s in force (%d rules)", result.rules.version, len(result.rules.rules))
    return store


def _claim_spool(source: Source, ledger: Ledger) -> None:
    """A spool has one reader: with a shared ledger, a second worker must not start."""
    if not isinstance(source, SpoolSource) or not _is_postgres(ledger):
        return
    if not ledger.acquire_exclusive(source.name):
        ledger.close()
        raise ConfigError(
            f"another trigmail worker already reads {source.path} with this PostgreSQL "
            "ledger; a spool has one worker only (use a Redis stream for several)"
        )


def _is_postgres(ledger: Ledger) -> TypeGuard[PostgresLedger]:
    # Without its module loaded no PostgresLedger exists, and a SQLite serve never loads it.
    module = sys.modules.get("trigmail.ledger.postgres")
    return module is not None and isinstance(ledger, module.PostgresLedger)


def _claim_sqlite(ledger: Ledger) -> None:
    """A SQLite ledger has one worker: a second serve must not start on it.

    At start a serve settles every send left ``sending`` as a crash leftover, which would
    wreck a live worker's in-flight sends, and its scheduler trusts its own cache.
    """
    if not isinstance(ledger, SqliteLedger):
        return
    try:
        claimed = ledger.acquire_exclusive(SQLITE_WORKER_LOCK)
    except LedgerError:
        ledger.close()
        raise
    if not claimed:
        ledger.close()
        raise ConfigError(
            f"another trigmail serve is already running on the SQLite ledger {ledger.path}; "
            "a SQLite ledger has one worker only (use a PostgreSQL ledger for several)"
        )


def _install_signals(daemon: Daemon) -> None:
    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("serve: %s received: stopping", signal.Signals(signum).name)
        daemon.request_stop()

    def reload(_signum: int, _frame: FrameType | None) -> None:
        log.info("serve: SIGHUP received: reloading rules")
        daemon.request_reload()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)


@runtime_checkable
class _ReportsHealth(Protocol):
    """A source that can say why it cannot be read (the spool, a Redis stream)."""

    def health(self) -> str | None: ...


def _health(daemon: Daemon, source: Source) -> HealthCheck:
    """The daemon's liveness, and why its source cannot be read (a spool refused as a symlink
    or a FIFO, or in a missing directory; Redis unreachable), if it cannot."""

    spool = SpoolPathHealth(source.path) if isinstance(source, SpoolSource) else None

    def check() -> bool | str:
        problems = []
        if spool is not None:
            problems.append(spool.problem())
        if isinstance(source, _ReportsHealth):
            problems.append(source.health())
        healthy = daemon.healthy()
        if healthy is not True:
            problems.append(healthy or "unhealthy")
        return "; ".join(p for p in problems if p) or True

    return check


def _webhook(
    config: WebhookConfig | None, ledger: Ledger, metrics: WebhookMetrics
) -> WebhookServer | None:
    """SendGrid's Event Webhook on its own listener, when configured (docs/webhook.md)."""
    if config is None:
        return None
    key = resolve_public_key(config)
    receiver = Receiver(
        ledger, Verifier(key), metrics, path=config.path, max_age_s=config.max_age_s
    )
    return serve_webhook(receiver, config.listen, config.max_body_bytes)


def _warn_verify_without_webhook(config: Config, rules: RuleStore) -> None:
    verify = [r.id for r in rules().rules if r.on_doubt == OnDoubt.VERIFY]
    if verify and config.webhook is None:
        log.warning(
            "serve: rules %s say on_doubt: verify but no webhook is configured: every send in "
            "doubt will be sent again after %ss (see docs/webhook.md)",
            ", ".join(verify),
            config.delivery.verify_after_s,
        )


class _Probes:
    """``/healthz`` and ``/readyz``, served from before the daemon exists: opening (and
    migrating) the ledger may take a while, and meanwhile the process is alive but not ready."""

    def __init__(self) -> None:
        self._daemon: Daemon | None = None
        self._health: HealthCheck | None = None

    def attach(self, daemon: Daemon, source: Source) -> None:
        self._health = _health(daemon, source)
        self._daemon = daemon

    def health(self) -> bool | str:
        return True if self._health is None else self._health()

    def ready(self) -> bool | str:
        """Ready once started (ledger open, in-flight sends settled, source tailed) and
        healthy."""
        daemon = self._daemon
        return self.health() if daemon is not None and daemon.started.is_set() else "starting"


def start_fields(config: Config, provider: SendGridAccount | OutboxConfig) -> dict[str, Any]:
    """The start line's fields: the config's summary flattened (``source.spool``), so that
    both log formats show plain values, never a Python repr; the provider as resolved."""
    fields: dict[str, Any] = {}
    summary = config.describe()
    summary["provider"] = describe_provider(
        provider.settings if isinstance(provider, SendGridAccount) else provider
    )
    for key, value in summary.items():
        if isinstance(value, dict):
            fields.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, list):
            fields[key] = ",".join(str(v) for v in value)
        else:
            fields[key] = value
    return fields


def run(config: Config) -> None:
    """Wire every part from ``config`` and serve until SIGTERM/SIGINT.

    Raises:
        ConfigError: a key the config names cannot be read, or a second worker on a ledger
            or spool that has one.
    """
    provider = resolve_provider(config)
    log.info("serve: starting", extra=start_fields(config, provider))
    tune_gc()
    metrics = Metrics()
    rules = _rules(config, metrics)
    probes = _Probes()
    server = (
        None
        if config.metrics_listen is None
        else serve_metrics(metrics, config.metrics_listen, probes.health, probes.ready)
    )
    try:
        _serve(config, provider, metrics, rules, probes)
    finally:
        if server is not None:
            server.close()


def _serve(
    config: Config,
    resolved: SendGridAccount | OutboxConfig,
    metrics: Metrics,
    rules: RuleStore,
    probes: _Probes,
) -> None:
    # A worker's stream consumer name also names it in the ledger's leases, so a restarted
    # worker settles its own in-flight sends at once instead of after their lease.
    worker_id = config.source.consumer if isinstance(config.source, RedisConfig) else None
    ledger = open_ledger(config.ledger, worker_id=worker_id)
    _claim_sqlite(ledger)  # before the daemon recovers in-flight sends
    source = _source(config)
    _claim_spool(source, ledger)
    provider = _provider(config, resolved)
    webhook_metrics = WebhookMetrics(metrics.registry)
    reconciler = Reconciler(ledger, webhook_metrics, config.delivery.verify_after_s)
    _warn_verify_without_webhook(config, rules)
    daemon = Daemon(
        source,
        ledger,
        provider,
        rules,
        metrics,
        concurrency=config.delivery.concurrency,
        retry=RetryPolicy(
            base_s=config.delivery.retry_base_s,
            cap_s=config.delivery.retry_cap_s,
            max_attempts=config.delivery.max_attempts,
        ),
        shutdown_timeout_s=config.delivery.shutdown_timeout_s,
        retention_s=config.retention_s,
        batch_window_s=config.delivery.batch_window_s,
        max_hold_s=config.delivery.max_hold_s,
        reconcile=reconciler.step,
        decisions_level=logging.INFO if config.log_decisions == "info" else logging.DEBUG,
    )
    _install_signals(daemon)
    watcher = RulesWatcher(
        config.rules_dirs, daemon.request_reload, changed_since_load=rules.changed_since_load
    )
    probes.attach(daemon, source)
    webhook = _webhook(config.webhook, ledger, webhook_metrics)
    watcher.start()
    try:
        daemon.run()
    finally:
        watcher.stop()
        if webhook is not None:
            webhook.close()
        provider.close()
        ledger.close()
