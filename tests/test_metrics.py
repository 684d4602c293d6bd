"""The daemon's metrics, scraped over real HTTP from the server trigmail starts."""

from __future__ import annotations

import http.client
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_harness import Serve, serve_in
from trigmail.decisions import Reason
from trigmail.errors import ConfigError
from trigmail.ledger.base import SendState
from trigmail.metrics import HealthCheck, Metrics, MetricsServer, parse_listen, serve_metrics


def get(server: MetricsServer, path: str, accept: str = "") -> tuple[int, str, str]:
    """GET ``path``; return the status, the Content-Type and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into ``{(name, sorted labels): value}``."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    with serve_metrics(metrics, "127.0.0.1:0") as running:
        yield running


def test_scrape_shows_what_was_recorded(metrics: Metrics, server: MetricsServer) -> None:
    metrics.events_read.labels(source="spool").inc(3)
    metrics.record_decision("cart-recovery", Reason.DELAY)
    metrics.record_decision(None, Reason.NO_RULE)
    metrics.record_send("cart-recovery", SendState.IN_DOUBT)
    metrics.record_dead_letter(Reason.INVALID_JSON)
    metrics.sends_in_doubt.set(1)
    metrics.sends_scheduled.set(42)
    metrics.provider_requests_in_flight.inc()

    status, content_type, body = get(server, "/metrics")

    assert status == 200
    assert content_type.startswith("text/plain")
    got = samples(body)
    assert got[("trigmail_events_read_total", (("source", "spool"),))] == 3
    assert got[("trigmail_decisions_total", (("reason", "delay"), ("rule", "cart-recovery")))] == 1
    assert got[("trigmail_decisions_total", (("reason", "no_rule"), ("rule", "")))] == 1
    assert got[("trigmail_sends_total", (("rule", "cart-recovery"), ("state", "in_doubt")))] == 1
    assert got[("trigmail_dead_letters_total", (("reason", "invalid_json"),))] == 1
    assert got[("trigmail_sends_in_doubt", ())] == 1
    assert got[("trigmail_sends_scheduled", ())] == 42
    assert got[("trigmail_provider_requests_in_flight", ())] == 1


def test_sends_of_an_ab_split_are_counted_per_variant(
    metrics: Metrics, server: MetricsServer
) -> None:
    metrics.record_send("promo", SendState.SENT, "a")
    metrics.record_send("promo", SendState.SENT, "a")
    metrics.record_send("promo", SendState.CANCELLED, "b")
    metrics.record_send("cart-recovery", SendState.SENT)  # no split: no variant line

    got = samples(get(server, "/metrics")[2])
    variant_lines = {k: v for k, v in got.items() if k[0] == "trigmail_variant_sends_total"}
    assert variant_lines == {
        (
            "trigmail_variant_sends_total",
            (("rule", "promo"), ("state", "sent"), ("variant", "a")),
        ): 2,
        (
            "trigmail_variant_sends_total",
            (("rule", "promo"), ("state", "cancelled"), ("variant", "b")),
        ): 1,
    }
    assert got[("trigmail_sends_total", (("rule", "promo"), ("state", "sent")))] == 2


def test_latency_histograms_have_buckets_from_1ms_to_10s(
    metrics: Metrics, server: MetricsServer
) -> None:
    metrics.trigger_to_provider_seconds.observe(0.0008)  # under the first bucket
    metrics.trigger_to_provider_seconds.observe(12.0)  # beyond the last finite bucket
    metrics.provider_request_seconds.observe(0.2)
    metrics.ledger_commit_seconds.observe(0.003)

    got = samples(get(server, "/metrics")[2])

    bucket = "trigmail_trigger_to_provider_seconds_bucket"
    assert got[(bucket, (("le", "0.001"),))] == 1
    assert got[(bucket, (("le", "10.0"),))] == 1
    assert got[(bucket, (("le", "+Inf"),))] == 2
    assert got[("trigmail_provider_request_seconds_count", ())] == 1
    assert got[("trigmail_ledger_commit_seconds_bucket", (("le", "0.005"),))] == 1


def test_reloads_are_tracked_like_alertmanager(metrics: Metrics, server: MetricsServer) -> None:
    before = samples(get(server, "/metrics")[2])
    metrics.record_reload(True, at_s=1_800_000_000.0)
    metrics.record_reload(False, at_s=1_800_000_060.0)
    after = samples(get(server, "/metrics")[2])

    # Both results are exported from the start, so alerts see a zero rather than no series.
    assert before[("trigmail_rule_reloads_total", (("result", "failure"),))] == 0
    assert after[("trigmail_rule_reloads_total", (("result", "success"),))] == 1
    assert after[("trigmail_rule_reloads_total", (("result", "failure"),))] == 1
    assert after[("trigmail_rules_last_reload_successful", ())] == 0
    # The failed reload leaves the time of the last good one in place.
    assert after[("trigmail_rules_last_reload_success_timestamp_seconds", ())] == 1_800_000_000


def test_every_metric_of_the_daemon_is_prefixed(metrics: Metrics) -> None:
    names = {family.name for family in metrics.registry.collect()}
    ours = {name for name in names if not name.startswith("process_")}
    assert ours and all(name.startswith("trigmail_") for name in ours)


def test_registries_are_independent() -> None:
    first, second = Metrics(process=False), Metrics(process=False)
    first.events_read.labels(source="redis").inc()
    assert first.registry.get_sample_value("trigmail_events_read_total", {"source": "redis"}) == 1
    assert (
        second.registry.get_sample_value("trigmail_events_read_total", {"source": "redis"}) is None
    )


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (lambda: True, (200, "ok\n")),  # healthy
        (lambda: "ledger unreachable", (503, "ledger unreachable\n")),  # its reason is shown
        (lambda: False, (503, "unhealthy\n")),  # no reason given
    ],
)
def test_healthz(metrics: Metrics, health: HealthCheck, expected: tuple[int, str]) -> None:
    with serve_metrics(metrics, "127.0.0.1:0", health=health) as server:
        status, _, body = get(server, "/healthz")
    assert (status, body) == expected


def test_a_raising_health_check_is_a_503_and_logged(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    with (
        caplog.at_level(logging.ERROR, logger="trigmail.metrics"),
        serve_metrics(metrics, "127.0.0.1:0", health=broken) as server,
    ):
        status, _, body = get(server, "/healthz")
    assert (status, body) == (503, "health check failed\n")
    assert "the health check raised" in caplog.text


def test_openmetrics_when_the_scraper_asks_for_it(server: MetricsServer) -> None:
    status, content_type, body = get(server, "/metrics", accept="application/openmetrics-text")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_unknown_path_is_404(server: MetricsServer) -> None:
    assert get(server, "/nope")[0] == 404


def test_close_releases_the_port(metrics: Metrics) -> None:
    server = serve_metrics(metrics, "127.0.0.1:0")
    port = server.port
    server.close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


def test_a_port_in_use_is_a_config_error(metrics: Metrics, server: MetricsServer) -> None:
    with pytest.raises(ConfigError, match="cannot listen") as raised:
        serve_metrics(metrics, f"127.0.0.1:{server.port}")
    # the operator is told what to type, not only what went wrong
    for hint in ("--metrics-listen", "TRIGMAIL_METRICS_LISTEN", "metrics: null"):
        assert hint in str(raised.value)


def test_serve_on_a_taken_port_exits_1_saying_what_to_type(
    tmp_path: Path, server: MetricsServer
) -> None:
    serve = serve_in(tmp_path, "http://127.0.0.1:9", "SG.test", {"spool": "events.jsonl"}, "t")
    taken = ["--metrics-listen", f"127.0.0.1:{server.port}"]
    # serve's own arguments, its metrics address replaced by the taken one
    args = serve.command[serve.command.index("serve") + 1 : -2]
    with Serve(tmp_path, [*args, *taken], serve.env) as started:
        assert started.wait_exit() == 1
        assert "--metrics-listen HOST:PORT" in started.stderr
        assert "TRIGMAIL_METRICS_LISTEN" in started.stderr


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),  # the default
        ("[::1]:9464", ("::1", 9464)),  # IPv6 in brackets
        ("localhost:0", ("localhost", 0)),  # a host name, ephemeral port
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", ":9464", "host:port", "host:70000", ""])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen(listen)


def exchange(server: MetricsServer, request: bytes) -> bytes:
    """Send raw bytes, half-close, and return everything the server answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "answer_starts"),
    [
        # only GET is served
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 405 "),
        # not HTTP at all: closed without an answer
        (b"\x16\x03\x01 a TLS hello\r\n\r\n", b""),
        # a request head over 8 KiB: closed without an answer
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b""),
        # a request cut short
        (b"GET /healthz HTTP/1.1\r\n", b""),
    ],
)
def test_bad_requests_get_no_traceback(
    server: MetricsServer,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    answer_starts: bytes,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="trigmail"):
        answer = exchange(server, request_bytes)
        # The server is still there, and says so.
        assert get(server, "/healthz")[:1] == (200,)
    assert answer.startswith(answer_starts) if answer_starts else answer == b""
    assert all(record.exc_info is None for record in caplog.records)
    assert "Traceback" not in caplog.text


def test_a_started_serve_reports_its_first_rule_load(tmp_path: Path) -> None:
    before_s = time.time()
    with serve_in(
        tmp_path, "http://127.0.0.1:9", "SG.test", {"spool": str(tmp_path / "e.jsonl")}, "t"
    ) as serve:
        serve.wait_ready()
        loaded_s = serve.metric("trigmail_rules_last_reload_success_timestamp_seconds")
        assert loaded_s is not None and loaded_s >= int(before_s)
        assert serve.metric("trigmail_rules_last_reload_successful") == 1
        assert serve.stop() == 0
