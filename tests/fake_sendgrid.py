"""A fake SendGrid ``/v3/mail/send``: a real HTTP/1.1 server on loopback, with fault injection.

It validates requests the way SendGrid does (401, 400 with an ``errors`` body, 413), answers 202
with a unique ``X-Message-Id``, and records everything it received. Faults are queued with
:meth:`FakeSendGrid.inject` or drawn at seeded random rates for randomised runs.

In tests use the ``sendgrid_fake`` fixture; for benchmarks and manual runs::

    python -m tests.fake_sendgrid --port 8025 --latency-ms 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import re
import select
import signal
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

import pytest

logger = logging.getLogger(__name__)

SEND_PATH = "/v3/mail/send"
SCOPES_PATH = "/v3/scopes"
TEST_API_KEY = "SG.fake-test-key.0123456789abcdefghijklmnopqrstuvwxyz"
MAX_BODY_BYTES = 20_000_000
RATE_LIMIT_PER_PERIOD = 600
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>.]+$")
# Waiting in a hang is woken by ``release`` or by ``stop``; this bounds how late ``stop`` is seen.
_HANG_POLL_S = 0.02
_SHUTDOWN_POLL_S = 0.01
_DRAIN_CHUNK_BYTES = 65536


class FaultKind(StrEnum):
    """What the fake does to one request instead of answering it normally."""

    BAD_REQUEST = "bad_request"  # 400 with an `errors` body, whatever the request
    RATE_LIMIT = "rate_limit"  # 429 with X-RateLimit-Limit/Remaining/Reset
    SERVER_ERROR = "server_error"  # 500
    UNAVAILABLE = "unavailable"  # 503
    HANG_AFTER_ACCEPT = "hang_after_accept"  # accepted, then no answer until release or stop
    RESET_BEFORE_READ = "reset_before_read"  # RST before the body is read: not accepted
    RESET_AFTER_ACCEPT = "reset_after_accept"  # accepted, then RST without an answer


_STATUS_FAULTS = {
    FaultKind.BAD_REQUEST: 400,
    FaultKind.RATE_LIMIT: 429,
    FaultKind.SERVER_ERROR: 500,
    FaultKind.UNAVAILABLE: 503,
}


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    Args:
        kind: what happens.
        reset_in_s: for a 429, ``X-RateLimit-Reset`` is the fake's clock plus this.
        retry_after_s: for a 429 or 503, also send ``Retry-After`` with this many seconds.
    """

    kind: FaultKind
    reset_in_s: float = 1.0
    retry_after_s: float | None = None


@dataclass(frozen=True)
class FaultRates:
    """Latency for every request, and the chance of each fault per request (sum at most 1)."""

    latency_s: float = 0.0
    bad_request: float = 0.0
    rate_limit: float = 0.0
    server_error: float = 0.0
    unavailable: float = 0.0
    hang_after_accept: float = 0.0
    reset_before_read: float = 0.0
    reset_after_accept: float = 0.0

    def draw(self, rng: random.Random) -> Fault | None:
        """Return the fault for one request, or ``None``, from one draw of ``rng``."""
        point = rng.random()
        for kind in FaultKind:
            point -= getattr(self, kind.value)
            if point < 0:
                return Fault(kind)
        return None


@dataclass(frozen=True)
class Received:
    """One request as the fake saw it.

    ``status`` is what was answered, or ``None`` when the fault meant no answer (a reset, a hang).
    ``received_at`` is the fake's clock (epoch seconds) when the request's headers were read.
    ``late``: an accepted request whose client had closed its end before the answer was
    written (it gave up waiting, at its read timeout): the answer never reached it.
    """

    connection: int
    path: str
    body: Any
    status: int | None
    accepted: bool
    fault: FaultKind | None
    message_id: str | None = None
    received_at: float | None = None
    late: bool = False


def sendgrid_error(message: str, field: str | None = None) -> dict[str, Any]:
    """Return one entry of a SendGrid ``errors`` list."""
    return {"message": message, "field": field, "help": None}


def validate_body(body: Any) -> list[dict[str, Any]]:
    """Return SendGrid's errors for a ``/v3/mail/send`` body (empty when valid)."""
    if not isinstance(body, dict):
        return [sendgrid_error("The request body must be a JSON object.")]
    return (
        _check_from(body) + _check_content(body) + _check_categories(body) + _check_recipients(body)
    )


def _check_from(body: dict[str, Any]) -> list[dict[str, Any]]:
    sender = body.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        return [sendgrid_error("The from object must be provided for every email send.", "from")]
    if not _ADDRESS.match(str(sender["email"])):
        return [sendgrid_error("The from email does not contain a valid address.", "from.email")]
    return []


def _check_content(body: dict[str, Any]) -> list[dict[str, Any]]:
    if body.get("template_id") or body.get("content"):
        return []
    return [
        sendgrid_error("Unless a valid template_id is provided, content is required.", "content")
    ]


def _check_categories(body: dict[str, Any]) -> list[dict[str, Any]]:
    if len(body.get("categories") or ()) > 10:
        return [
            sendgrid_error("You may not have more than 10 categories per request.", "categories")
        ]
    return []


def _check_recipients(body: dict[str, Any]) -> list[dict[str, Any]]:
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        message = "The personalizations field is required and must have at least one item."
        return [sendgrid_error(message, "personalizations")]
    if len(personalizations) > 1000:
        message = "The personalizations field may not have more than 1000 items."
        return [sendgrid_error(message, "personalizations")]
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, personalization in enumerate(personalizations):
        errors += _check_personalization(index, personalization, body, seen)
    if len(seen) > 1000:
        errors.append(sendgrid_error("The total number of recipients must be no more than 1000."))
    return errors


def _check_personalization(
    index: int, personalization: Any, body: dict[str, Any], seen: set[str]
) -> list[dict[str, Any]]:
    where = f"personalizations.{index}"
    to = personalization.get("to") if isinstance(personalization, dict) else None
    if not isinstance(to, list) or not to:
        message = "The to array is required for all personalization objects."
        return [sendgrid_error(message, f"{where}.to")]
    errors = []
    for position, recipient in enumerate(to):
        address = str(recipient.get("email", "")) if isinstance(recipient, dict) else ""
        if not _ADDRESS.match(address):
            message = "Does not contain a valid address."
            errors.append(sendgrid_error(message, f"{where}.to.{position}.email"))
        elif address.lower() in seen:
            message = f"Each email address should be unique; {address} appears twice."
            errors.append(sendgrid_error(message, f"{where}.to"))
        seen.add(address.lower())
    args = {**(body.get("custom_args") or {}), **(personalization.get("custom_args") or {})}
    if len(json.dumps(args, separators=(",", ":")).encode()) >= 10_000:
        errors.append(sendgrid_error("custom_args must be under 10,000 bytes.", f"{where}"))
    return errors


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that ``stop`` can wake and close every one of them."""

    # Non-daemon handler threads, joined by server_close: a stopped fake leaves no socket open.
    daemon_threads = False
    # A bench opens a whole connection pool at once; the default backlog of 5 would drop SYNs.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeSendGrid) -> None:
        self.fake = fake
        self.connections_opened = 0
        self._open: set[socket.socket] = set()
        self._numbers: dict[socket.socket, int] = {}
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on a bad resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.socket.getsockname()[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
            self.connections_opened += 1
            number = self.connections_opened
        self._numbers[request] = number
        super().process_request(request, client_address)

    def connection_number(self, request: Any) -> int:
        """Return the 1-based number of the connection ``request`` arrived on."""
        with self._open_lock:
            return self._numbers[request]

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
            self._numbers.pop(request, None)
        super().shutdown_request(request)

    def wake_connections(self) -> None:
        """Make every handler blocked reading an idle keep-alive connection see end of file."""
        with self._open_lock:
            for request in self._open:
                # A socket its handler closed meanwhile needs no waking.
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and closed its end is normal here, not worth a traceback.
        logger.debug("fake sendgrid: connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    received_at: float | None = None

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.server.connection_number(self.request)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake sendgrid: " + format, *args)

    def do_GET(self) -> None:
        # The key's scopes: the authenticated request that sends nothing (`trigmail check
        # --connect`).
        fake = self.server.fake
        if self.path != SCOPES_PATH:
            self._reply(404, {"errors": [sendgrid_error(f"No route for {self.path}.")]})
        elif self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            message = "The provided authorization grant is invalid, expired, or revoked"
            self._reply(401, {"errors": [sendgrid_error(message)]})
        else:
            self._reply(200, {"scopes": ["mail.send"]})

    def do_POST(self) -> None:
        fake = self.server.fake
        self.received_at = fake.clock()
        fault = fake.next_fault()
        fake.pause(fake.rates.latency_s)
        if fault is not None and fault.kind is FaultKind.RESET_BEFORE_READ:
            fake.record(self._received(None, None, False, fault))
            self._reset()
            return
        status, errors, body = fake.judge(
            self.path, self.headers.get("Authorization"), self._body()
        )
        if status in (202, 400) and fault is not None and fault.kind in _STATUS_FAULTS:
            self._answer_fault(fault, body)
        elif status == 202:
            self._accept(body, fault)
        else:
            fake.record(self._received(body, status, False, None))
            self._reply(status, {"errors": errors})

    def _body(self) -> bytes | None:
        """Return the request body, or ``None`` (after draining it) when it is over the limit."""
        length = int(self.headers.get("Content-Length") or 0)
        if length <= self.server.fake.max_body_bytes:
            return self.rfile.read(length)
        # Read it all anyway, so the 413 reaches a client still writing instead of a reset.
        while length > 0:
            chunk = self.rfile.read(min(length, _DRAIN_CHUNK_BYTES))
            if not chunk:
                break
            length -= len(chunk)
        return None

    def _accept(self, body: Any, fault: Fault | None) -> None:
        fake = self.server.fake
        message_id = fake.new_message_id()
        received = self._received(body, None if fault else 202, True, fault, message_id)
        if fault is None and self._client_gone():
            received = replace(received, late=True)
        fake.record(received)
        if fake.on_accept is not None:
            # SendGrid reports what it accepted, whatever becomes of the answer.
            fake.on_accept(body, message_id)
        kind = None if fault is None else fault.kind
        # A hang ends with the answer when released, or with a reset when the fake stops.
        answers = kind is None or (kind is FaultKind.HANG_AFTER_ACCEPT and fake.hang())
        if answers:
            self._reply(202, None, {"X-Message-Id": message_id})
        else:
            self._reset()

    def _answer_fault(self, fault: Fault, body: Any) -> None:
        fake = self.server.fake
        status = _STATUS_FAULTS[fault.kind]
        headers: dict[str, str] = {}
        if fault.kind is FaultKind.RATE_LIMIT:
            headers["X-RateLimit-Limit"] = str(RATE_LIMIT_PER_PERIOD)
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset"] = str(int(fake.clock() + fault.reset_in_s))
        if fault.retry_after_s is not None:
            headers["Retry-After"] = str(int(fault.retry_after_s))
        fake.record(self._received(body, status, False, fault))
        message = {
            400: "The request is invalid (injected).",
            429: "too many requests",
            500: "internal error",
            503: "service unavailable",
        }
        self._reply(status, {"errors": [sendgrid_error(message[status])]}, headers)

    def _received(
        self,
        body: Any,
        status: int | None,
        accepted: bool,
        fault: Fault | None,
        message_id: str | None = None,
    ) -> Received:
        kind = None if fault is None else fault.kind
        return Received(
            self.connection_id,
            self.path,
            body,
            status,
            accepted,
            kind,
            message_id,
            self.received_at,
        )

    def _reply(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        content = b"" if document is None else json.dumps(document).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if document is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _client_gone(self) -> bool:
        """Whether the client has closed its end: readable with nothing to read is its FIN
        (a client sends nothing more on a connection before it has its answer)."""
        connection: socket.socket = self.connection
        if not select.select([connection], [], [], 0)[0]:
            return False
        try:
            return connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset by the client
            return True

    def _reset(self) -> None:
        """Close the connection with a TCP RST (SO_LINGER 0) instead of a graceful FIN."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The socket closes for real only once its file objects are closed too.
        self.rfile.close()
        self.wfile.close()
        self.connection.close()


class FakeSendGrid:
    """The fake server; start it with ``with FakeSendGrid() as fake:`` or the fixture.

    Args:
        api_key: the only key accepted as ``Authorization: Bearer <key>``.
        port: the port to listen on (0: an ephemeral one).
        max_body_bytes: bodies larger than this get a 413.
        rates: latency and random fault rates; queued faults come first.
        seed: seeds the draws of ``rates``, so a randomised run can be repeated.
        clock: epoch seconds now, for ``X-RateLimit-Reset``.
    """

    def __init__(
        self,
        *,
        api_key: str = TEST_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = MAX_BODY_BYTES,
        rates: FaultRates | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        # Called with each accepted body and its message id (tests.fake_webhook.WebhookPoster).
        self.on_accept: Callable[[Any, str], None] | None = None
        self.rates = rates or FaultRates()
        self.clock = clock
        self.release = threading.Event()
        self._address = (host, port)
        self._rng = random.Random(seed)
        self._faults: deque[Fault] = deque()
        self._received: list[Received] = []
        self._message_count = 0
        self._connections_opened = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeSendGrid:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        server = self._running()
        return f"http://{server.server_name}:{server.server_port}"

    @property
    def connections(self) -> int:
        """How many TCP connections were accepted so far (kept after ``stop``)."""
        server = self._server
        return self._connections_opened + (0 if server is None else server.connections_opened)

    @property
    def requests(self) -> list[Received]:
        """Every request received, in order (a copy)."""
        with self._lock:
            return list(self._received)

    @property
    def accepted(self) -> list[Any]:
        """The body of every accepted request, in order (a copy)."""
        return [r.body for r in self.requests if r.accepted]

    def accepted_keys(self) -> list[str]:
        """Every accepted personalization's ``custom_args.trigmail_key``, duplicates kept."""
        return [
            p.get("custom_args", {}).get("trigmail_key")
            for body in self.accepted
            for p in body["personalizations"]
        ]

    def inject(self, *faults: Fault) -> None:
        """Apply ``faults`` to the next requests, one each, in order."""
        with self._lock:
            self._faults.extend(faults)

    def start(self) -> None:
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # How often the loop checks for shutdown: bounds how long ``stop`` takes.
            kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name="fake-sendgrid",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, end hung requests with a reset, and close every socket."""
        if self._server is None or self._thread is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.wake_connections()
        self._server.server_close()  # joins the handler threads
        self._thread.join()
        self._connections_opened += self._server.connections_opened
        self._server = None

    # The handler's side: each is called from a connection's thread.

    def next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            return self.rates.draw(self._rng)

    def pause(self, delay_s: float) -> None:
        if delay_s > 0:
            self._stopping.wait(delay_s)

    def hang(self) -> bool:
        """Block until ``release`` is set (``True``) or the fake stops (``False``)."""
        while not self.release.wait(_HANG_POLL_S):
            if self._stopping.is_set():
                return False
        return True

    def judge(
        self, path: str, authorization: str | None, raw: bytes | None
    ) -> tuple[int, list[dict[str, Any]], Any]:
        """Return the status SendGrid would answer, its errors, and the parsed body."""
        if raw is None:
            return 413, [sendgrid_error("The request body is too large.")], None
        if path != SEND_PATH:
            return 404, [sendgrid_error(f"No route for {path}.")], None
        if authorization != f"Bearer {self.api_key}":
            message = "The provided authorization grant is invalid, expired, or revoked"
            return 401, [sendgrid_error(message)], None
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, [sendgrid_error("Bad Request: the body is not JSON.")], None
        errors = validate_body(body)
        return (400 if errors else 202), errors, body

    def new_message_id(self) -> str:
        with self._lock:
            self._message_count += 1
            return f"fake{self._message_count:08d}.{uuid.uuid4().hex[:16]}"

    def record(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)

    def _running(self) -> _Server:
        if self._server is None:
            raise RuntimeError("the fake SendGrid is not running")
        return self._server


@pytest.fixture
def sendgrid_fake() -> Iterator[FakeSendGrid]:
    """A running fake SendGrid on an ephemeral loopback port, stopped after the test."""
    with FakeSendGrid() as fake:
        yield fake


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A fake SendGrid /v3/mail/send on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--api-key", default=TEST_API_KEY)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    for rate in fields(FaultRates):
        if rate.name != "latency_s":
            flag = "--rate-" + rate.name.replace("_", "-")
            parser.add_argument(flag, type=float, default=0.0, help="chance per request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C; print the URL first so a bench script can read it."""
    args = _parse_args(argv)
    rates = {k.removeprefix("rate_"): v for k, v in vars(args).items() if k.startswith("rate_")}
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fake = FakeSendGrid(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        rates=FaultRates(latency_s=args.latency_ms / 1000, **rates),
        seed=args.seed,
    )
    with fake:
        print(f"fake SendGrid on {fake.url} (api key {fake.api_key})", flush=True)
        done.wait()


if __name__ == "__main__":
    main()
