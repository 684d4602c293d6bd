"""A small HTTP/1.1 GET server for ``/metrics`` and ``/healthz`` that slow clients cannot exhaust.

The stdlib's threading server started one thread per connection and waited on it for ever: 400
connections that never finished their request (slowloris) made 400 threads, and its errors
went to stderr as tracebacks. Here connections are coroutines on one event-loop thread:

- a client has :data:`REQUEST_TIMEOUT_S` to send its whole request head (at most
  :data:`MAX_REQUEST_BYTES`), and :data:`WRITE_TIMEOUT_S` to read the answer;
- at most :data:`MAX_READING` connections may be sending their request at once: a new one
  drops the oldest, so a flood of idle connections cannot keep a health probe out;
- answers are built by a pool of :data:`ANSWER_THREADS` threads, the only threads besides the
  loop's, so a slow ``/metrics`` page never holds up the loop;
- every error is one log line; none prints a traceback.

Each answer closes its connection (``Connection: close``), as the stdlib server did.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, Final

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S: Final = 5.0
WRITE_TIMEOUT_S: Final = 10.0
MAX_REQUEST_BYTES: Final = 8 * 1024
MAX_READING: Final = 256
ANSWER_THREADS: Final = 2

# (status, body, content type)
Answer = tuple[HTTPStatus, bytes, str]
# Called with the request's path (query string removed) and its Accept header, from a pool
# thread.
Answerer = Callable[[str, str], Answer]

_PLAIN: Final = "text/plain; charset=utf-8"


class BadRequestError(ValueError):
    """Raised for a request head that is not ``METHOD PATH HTTP/x.y`` and headers."""


def parse_head(head: bytes) -> tuple[str, str, str]:
    """Return the method, the path (query removed) and the Accept header of a request head.

    Raises:
        BadRequestError: the request line is malformed.
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequestError(f"malformed request line {lines[0][:80]!r}")
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    return parts[0], parts[1].split("?", 1)[0], accept


def _response(answer: Answer) -> bytes:
    status, body, content_type = answer
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class HttpServer:
    """Serve ``answer`` on the listening socket ``sock`` from a daemon thread until :meth:`close`.

    Args:
        sock: a bound, listening TCP socket; the server owns it from now on.
        answer: builds the answer to a GET.
        name: the threads' name prefix.
    """

    def __init__(self, sock: socket.socket, answer: Answerer, name: str) -> None:
        self._sock = sock
        self._answer = answer
        # What the logs call it: "metrics http", "webhook http".
        self._label = name.removeprefix("trigmail-") + " http"
        self._pool = ThreadPoolExecutor(max_workers=ANSWER_THREADS, thread_name_prefix=name)
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_log_loop_error)
        self._stopped = asyncio.Event()
        # Connections still sending their request, oldest first (dicts keep insertion order).
        self._reading: dict[asyncio.Task[Any], None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def close(self) -> None:
        """Stop serving, drop open connections, wait for the threads and release the socket."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sock.close()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(
            self._connection, sock=self._sock, limit=MAX_REQUEST_BYTES
        )
        self._ready.set()
        await self._stopped.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._reading[task] = None
        if len(self._reading) > MAX_READING:
            next(iter(self._reading)).cancel()  # the oldest still sending its request
        try:
            await self._exchange(reader, writer, task)
        except asyncio.CancelledError:
            pass  # dropped for a newer connection, or the server is closing
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.debug("%s: %s: connection dropped: %s", self._label, _peer(writer), _name(exc))
        except (asyncio.LimitOverrunError, ValueError) as exc:
            logger.info("%s: %s: bad request: %s", self._label, _peer(writer), _name(exc))
        except Exception as exc:
            logger.warning("%s: %s: %s", self._label, _peer(writer), _name(exc))
        finally:
            self._reading.pop(task, None)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[Any]
    ) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        del self._reading[task]
        method, path, accept = parse_head(head)
        if method != "GET":
            answer: Answer = (HTTPStatus.METHOD_NOT_ALLOWED, b"GET only\n", _PLAIN)
        else:
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self._pool, self._answer, path, accept)
        writer.write(_response(answer))
        writer.close()  # once the answer is flushed
        await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT_S)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "client"


def _name(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    logger.warning("metrics http: %s", _name(exc) if exc else context.get("message"))
