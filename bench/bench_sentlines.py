"""The decision listener's cost per email sent: metrics and the info line of each sent entry.

What ``trigmail serve`` does once a provider request is accepted, without the request: the
request's ``sent`` entries go through the observer serve builds (``DecisionObserver.observe_all``)
inside :func:`trigmail.loglines.lines_together`, to the handler and formatter of
:func:`trigmail.logs.logging_config` (``text``, ``info``, not journald), writing to
``/dev/null``, with a SendGrid key registered with the log guard as serve registers it.

Run: .venv/bin/python -m bench.bench_sentlines [--entries 20000] [--per-request 400]
     [--format text|json] [--journald]
Instructions per entry (``run`` is the measured part):
     valgrind --tool=callgrind --toggle-collect='*bench_sentlines.py:run' \\
         .venv/bin/python -m bench.bench_sentlines --entries 4000
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from trigmail import loglines, logs
from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.metrics import Metrics
from trigmail.observe import DecisionObserver

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
KEY = "SG.fake-test-key.0123456789abcdefghijklmnopqrstuvwxyz"


def sent_entries(count: int) -> list[LogEntry]:
    """``count`` entries as a backlog's welcome and receipt requests log them."""
    entries = []
    for n in range(count):
        rule = ("welcome", "receipt")[n % 2]
        event_id = f"evt-{n:07d}"
        entries.append(
            LogEntry(
                T0,
                event_id,
                f"user-{n % 5000:05d}",
                rule,
                0,
                f"{rule}:{event_id}",
                Outcome.SENT,
                Reason.DELIVERED,
                T0 - timedelta(seconds=3),
            )
        )
    return entries


def run(
    observe: Callable[[Sequence[LogEntry]], None], requests: Sequence[Sequence[LogEntry]]
) -> None:
    for entries in requests:
        with loglines.lines_together():
            observe(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--per-request", type=int, default=400)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--journald", action="store_true")
    args = parser.parse_args()
    with open("/dev/null", "w") as sink:  # noqa: PTH123 (a stream for logging_config)
        config = logs.logging_config(
            args.format, "INFO", stream_is_tty=False, journald=args.journald, stream=sink
        )
        logging.config.dictConfig(config)
        logs.register_secret(KEY)
        observer = DecisionObserver(Metrics(process=False), lambda: T0)
        entries = sent_entries(args.entries)
        size = args.per_request
        requests = [entries[at : at + size] for at in range(0, len(entries), size)]
        run(observer.observe_all, requests[:1])  # warm: label children, caches
        started = time.process_time()
        run(observer.observe_all, requests)
        cpu_s = time.process_time() - started
    print(f"{args.entries} sent entries: {cpu_s / args.entries * 1e6:.2f} us CPU each")


if __name__ == "__main__":
    main()
