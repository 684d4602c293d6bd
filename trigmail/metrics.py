"""Every Prometheus metric of the daemon, and the small HTTP server that exposes them.

The metrics live on a :class:`~prometheus_client.CollectorRegistry` of their own rather than
the process-global one, so each test (and each daemon in a test) builds a fresh, isolated set.
Names carry the ``trigmail_`` prefix and their unit; label values come from the enums in
:mod:`trigmail.decisions` and :mod:`trigmail.ledger.base`, so a dashboard can rely on them.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from http import HTTPStatus
from ipaddress import IPv6Address, ip_address
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

from trigmail.decisions import Reason
from trigmail.errors import ConfigError
from trigmail.httpserve import Answer, Answerer, HttpServer
from trigmail.ledger.base import SendState

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9464"

# The ``rule`` label of a decision no rule made (the event matched none). Rule ids match
# [a-z0-9-]+, so an empty value can never collide with one.
NO_RULE = ""

# From 1 ms (an immediate send on a warm connection) to 10 s (the provider timeout).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A batch commit is a local SQLite fsync or a PostgreSQL round trip: 0.5 ms to 5 s.
COMMIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

RELOAD_RESULTS = ("success", "failure")

_PLAIN = "text/plain; charset=utf-8"

# Healthy is ``True``; anything else is unhealthy, and a string says why.
HealthCheck = Callable[[], bool | str]


class Metrics:
    """The daemon's metrics, registered on ``registry`` (a fresh one by default).

    The attributes are the prometheus_client objects themselves; the ``record_*`` methods
    exist where a label value needs translating (an absent rule, a reload result).

    Args:
        registry: where to register; a new :class:`CollectorRegistry` when ``None``.
        process: also export the standard ``process_*`` metrics (memory, CPU, open files).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        self.events_read = Counter(
            "trigmail_events_read_total", "Events read, by source.", ["source"], registry=r
        )
        self.decisions = Counter(
            "trigmail_decisions_total",
            "Engine decisions, by rule (empty when none matched) and reason.",
            ["rule", "reason"],
            registry=r,
        )
        self.sends = Counter(
            "trigmail_sends_total",
            "Sends that reached a final state, by rule and state.",
            ["rule", "state"],
            registry=r,
        )
        self.variant_sends = Counter(
            "trigmail_variant_sends_total",
            "Sends of an A/B split (send.variants) that reached a final state, by rule, variant "
            'and state; held-out users are trigmail_decisions_total{reason="holdout"}.',
            ["rule", "variant", "state"],
            registry=r,
        )
        self.dead_letters = Counter(
            "trigmail_dead_letters_total", "Events set aside, by reason.", ["reason"], registry=r
        )
        self.rule_reloads = Counter(
            "trigmail_rule_reloads_total", "Rule reloads, by result.", ["result"], registry=r
        )
        self.rules_last_reload_successful = Gauge(
            "trigmail_rules_last_reload_successful",
            "Whether the last rule reload succeeded (1) or kept the previous rules (0).",
            registry=r,
        )
        self.rules_last_reload_success_timestamp_seconds = Gauge(
            "trigmail_rules_last_reload_success_timestamp_seconds",
            "Unix time of the last successful rule reload.",
            registry=r,
        )
        self.provider_requests_in_flight = Gauge(
            "trigmail_provider_requests_in_flight",
            "Provider requests started and not yet answered.",
            registry=r,
        )
        self.sends_in_doubt = Gauge(
            "trigmail_sends_in_doubt", "Sends in the in_doubt state in the ledger.", registry=r
        )
        self.rule_paused = Gauge(
            "trigmail_rule_paused",
            "1 for each rule paused now (trigmail pause), with whether its due sends are dropped.",
            ["rule", "drop"],
            registry=r,
        )
        self.sends_scheduled = Gauge(
            "trigmail_sends_scheduled", "Sends scheduled and not yet due or sent.", registry=r
        )
        self.sends_fired_past_watermark = Counter(
            "trigmail_sends_fired_past_watermark_total",
            "Due sends fired although events that entered the source before their due time "
            "were not all decided: held longer than delivery.max_hold.",
            registry=r,
        )
        self.source_watermark_lag_seconds = Gauge(
            "trigmail_source_watermark_lag_seconds",
            "How far the source's watermark (every event before it decided) trails the clock.",
            registry=r,
        )
        self.sends_held = Gauge(
            "trigmail_sends_held",
            "Sends due now but held until the events that entered before them are decided.",
            registry=r,
        )
        self.trigger_to_provider_seconds = Histogram(
            "trigmail_trigger_to_provider_seconds",
            "From when a send was due (read, for an immediate one) to the provider's answer.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.provider_request_seconds = Histogram(
            "trigmail_provider_request_seconds",
            "Duration of one provider request.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ledger_commit_seconds = Histogram(
            "trigmail_ledger_commit_seconds",
            "Duration of one ledger batch commit.",
            buckets=COMMIT_BUCKETS_S,
            registry=r,
        )
        self._decision_children: dict[tuple[str | None, Reason], Counter] = {}
        self._send_children: dict[tuple[str, SendState], Counter] = {}
        # Both results exist from the start, so rate() and alerts see a zero, not a gap.
        for result in RELOAD_RESULTS:
            self.rule_reloads.labels(result=result)

    def record_decision(self, rule_id: str | None, reason: Reason, count: int = 1) -> None:
        """Count ``count`` decisions; ``rule_id`` is ``None`` when the event matched no rule."""
        # A decision or two per event: the labelled child is looked up once per label pair
        # (``labels()`` checks and joins its arguments on every call).
        child = self._decision_children.get((rule_id, reason))
        if child is None:
            rule = NO_RULE if rule_id is None else rule_id
            child = self._decision_children[(rule_id, reason)] = self.decisions.labels(
                rule=rule, reason=reason
            )
        child.inc(count)

    def record_send(
        self, rule_id: str, state: SendState, variant: str | None = None, count: int = 1
    ) -> None:
        """Count ``count`` sends reaching ``state`` (``sent``, ``failed``, ``cancelled``,
        ``in_doubt``), and their A/B ``variant`` when they have one."""
        child = self._send_children.get((rule_id, state))
        if child is None:
            child = self._send_children[(rule_id, state)] = self.sends.labels(
                rule=rule_id, state=state
            )
        child.inc(count)
        if variant is not None:
            self.variant_sends.labels(rule=rule_id, variant=variant, state=state).inc(count)

    def record_dead_letter(self, reason: Reason | str) -> None:
        """Count one event set aside."""
        self.dead_letters.labels(reason=reason).inc()

    def record_pauses(self, rules: Mapping[str, bool]) -> None:
        """Show the rules paused now (each with whether it drops), and only those."""
        self.rule_paused.clear()
        for rule, drop in rules.items():
            self.rule_paused.labels(rule=rule, drop=str(drop).lower()).set(1)

    def record_reload(self, ok: bool, at_s: float) -> None:
        """Count a rule reload at Unix time ``at_s``, like Alertmanager's config reload metrics."""
        self.rule_reloads.labels(result=RELOAD_RESULTS[0] if ok else RELOAD_RESULTS[1]).inc()
        self.rules_last_reload_successful.set(1 if ok else 0)
        if ok:
            self.rules_last_reload_success_timestamp_seconds.set(at_s)


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:9464`` for IPv6) into a host and a port.

    Raises:
        ConfigError: when ``listen`` is not of that form.
    """
    host, sep, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"metrics.listen: expected HOST:PORT, got {listen!r}")
    return host, int(port_text)


def _address_family(host: str) -> socket.AddressFamily:
    try:
        is_v6 = isinstance(ip_address(host), IPv6Address)
    except ValueError:
        is_v6 = False  # a host name: resolved as IPv4, like the stdlib server did
    return socket.AF_INET6 if is_v6 else socket.AF_INET


def _health_answer(health: HealthCheck) -> tuple[HTTPStatus, str]:
    try:
        verdict = health()
    except Exception as exc:
        # A broken check must not take the endpoint down; its message may name internals.
        logger.error("healthz: the health check raised %s: %s", type(exc).__name__, exc)
        return HTTPStatus.SERVICE_UNAVAILABLE, "health check failed"
    if verdict is True:
        return HTTPStatus.OK, "ok"
    return HTTPStatus.SERVICE_UNAVAILABLE, verdict or "unhealthy"


def _answerer(metrics: Metrics, health: HealthCheck, ready: HealthCheck) -> Answerer:
    def answer(path: str, accept: str) -> Answer:
        if path == "/metrics":
            encoder, content_type = choose_encoder(accept)
            return HTTPStatus.OK, encoder(metrics.registry), content_type
        if path in ("/healthz", "/readyz"):
            status, text = _health_answer(health if path == "/healthz" else ready)
            return status, (text + "\n").encode(), _PLAIN
        return HTTPStatus.NOT_FOUND, b"not found\n", _PLAIN

    return answer


class MetricsServer:
    """``/metrics`` and ``/healthz`` served from a daemon thread; see :func:`serve_metrics`."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server

    @property
    def port(self) -> int:
        """The port listened on (the ephemeral one chosen when asked for port 0)."""
        return self._server.port

    def close(self) -> None:
        """Stop serving, wait for the serving threads and release the socket."""
        self._server.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def serve_metrics(
    metrics: Metrics,
    listen: str = DEFAULT_LISTEN,
    health: HealthCheck = lambda: True,
    ready: HealthCheck | None = None,
) -> MetricsServer:
    """Serve ``metrics`` at ``/metrics``, ``health`` at ``/healthz`` and ``ready`` at
    ``/readyz`` on ``listen``.

    Each answers 200 ``ok`` when its check returns ``True``, and 503 with the string it
    returned otherwise; ``ready`` defaults to ``health``. The server runs in a daemon thread
    until :meth:`close`; slow or idle clients cannot exhaust it (:mod:`trigmail.httpserve`).

    Args:
        metrics: what ``/metrics`` exposes, in the Prometheus text format (or OpenMetrics
            when the scraper asks for it).
        listen: ``HOST:PORT``; port 0 picks a free port, see :attr:`MetricsServer.port`.
        health: the liveness check, called on each ``/healthz`` request from a server
            thread, so it must be thread-safe and quick.

    Raises:
        ConfigError: when ``listen`` is malformed or cannot be bound.
    """
    host, port = parse_listen(listen)
    try:
        sock = socket.create_server((host, port), family=_address_family(host))
    except OSError as exc:
        raise ConfigError(
            f"metrics.listen: cannot listen on {listen!r}: {exc.strerror or exc}; pick a free "
            "address with --metrics-listen HOST:PORT (or TRIGMAIL_METRICS_LISTEN, or "
            "metrics.listen in the config; port 0 takes any free port), or set `metrics: null` "
            "in the config to serve no metrics"
        ) from exc
    server = HttpServer(sock, _answerer(metrics, health, ready or health), "trigmail-metrics")
    logger.info("metrics: serving /metrics, /healthz and /readyz on %s:%d", host, server.port)
    return MetricsServer(server)
