"""The webhook's own HTTP listener: the metrics server's bounded connection handling
(:mod:`trigmail.httpserve`), taking a POST with a body.

It faces SendGrid through the operator's TLS proxy, so everything is bounded: the request head
(size and time), the body (``max_body_bytes``, declared by ``Content-Length``: a larger one is
refused before it is read) and the time to send it. Answers are empty.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from http import HTTPStatus
from typing import Any, Final

from trigmail.errors import ConfigError
from trigmail.httpserve import REQUEST_TIMEOUT_S, WRITE_TIMEOUT_S, BadRequestError, HttpServer
from trigmail.metrics import parse_listen
from trigmail.webhook.receiver import Receiver, Request

logger = logging.getLogger(__name__)

# How long a client may take to send a body of the largest allowed size.
BODY_TIMEOUT_S: Final = 30.0


def _unused(path: str, accept: str) -> tuple[HTTPStatus, bytes, str]:
    raise AssertionError("the webhook listener answers through its receiver")


def parse_request_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Return the method, the path (query removed) and the headers (names in lower case).

    Raises:
        BadRequestError: the request line or a header line is malformed.
    """
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequestError("malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BadRequestError("malformed header line")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], headers


def _head(status: HTTPStatus) -> bytes:
    return (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")


class WebhookServer(HttpServer):
    """Serve ``receiver`` on ``sock`` from a daemon thread until :meth:`close`.

    Args:
        sock: a bound, listening TCP socket; the server owns it from now on.
        receiver: answers each request.
        max_body_bytes: the largest body read; a larger one is answered 413 unread.
    """

    def __init__(self, sock: socket.socket, receiver: Receiver, max_body_bytes: int) -> None:
        self._receiver = receiver
        self._max_body_bytes = max_body_bytes
        super().__init__(sock, _unused, "trigmail-webhook")

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[Any]
    ) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        method, path, headers = parse_request_head(head)
        status = await self._status(reader, method, path, headers)
        self._reading.pop(task, None)
        writer.write(_head(status))
        writer.close()  # once the answer is flushed
        await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT_S)

    async def _status(
        self, reader: asyncio.StreamReader, method: str, path: str, headers: dict[str, str]
    ) -> HTTPStatus:
        if "transfer-encoding" in headers:
            return HTTPStatus.LENGTH_REQUIRED  # SendGrid sends a Content-Length
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit() or len(length_text) > 12:
            return HTTPStatus.BAD_REQUEST
        length = int(length_text)
        body: bytes | None = None
        if length <= self._max_body_bytes and method == "POST":
            body = await asyncio.wait_for(reader.readexactly(length), BODY_TIMEOUT_S)
        request = Request(method, path, headers, body)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._receiver.answer, request)


def serve_webhook(receiver: Receiver, listen: str, max_body_bytes: int) -> WebhookServer:
    """Serve ``receiver`` on ``listen`` (``HOST:PORT``; port 0 picks a free one).

    Raises:
        ConfigError: ``listen`` is malformed or cannot be bound.
    """
    try:
        host, port = parse_listen(listen)
        sock = socket.create_server((host, port), family=_family(host))
    except (ConfigError, OSError) as exc:
        raise ConfigError(f"webhook.listen: cannot listen on {listen!r}: {exc}") from None
    server = WebhookServer(sock, receiver, max_body_bytes)
    logger.info(
        "webhook: serving SendGrid's Event Webhook at %s on %s:%d", receiver.path, host, server.port
    )
    return server


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
