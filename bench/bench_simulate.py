"""Throughput of `trigmail simulate`: events per second through the real engine, one core.

Run: .venv/bin/python -m bench.bench_simulate [--events 100000] [--rules rules.d]
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from pathlib import Path

from bench.events import event_lines
from trigmail.decisions import LogEntry
from trigmail.rules.loader import load_rules
from trigmail.simulate import Simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rules", type=Path, default=Path("rules.d"))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    lines = list(event_lines(args.events, bad_every=1000))
    rules = load_rules(args.rules).rule_set()
    entries: list[LogEntry] = []
    simulation = Simulation(rules, entries.append)
    # Start from a collected heap, as benchmark harnesses do: the garbage of building the
    # input is not the simulation's.
    gc.collect()
    started = time.perf_counter()
    started_cpu = time.process_time()
    summary = simulation.run(lines)
    elapsed_s = time.perf_counter() - started
    cpu_s = time.process_time() - started_cpu
    print(f"command: python -m bench.bench_simulate {' '.join(sys.argv[1:])}")
    print(f"rules: {len(rules.rules)} from {args.rules}")
    print(f"events: {args.events} in {elapsed_s:.2f} s = {args.events / elapsed_s:,.0f} events/s")
    # CPU time is the fairer figure on a shared machine: other processes do not inflate it much.
    print(f"cpu: {cpu_s:.2f} s = {args.events / cpu_s:,.0f} events per CPU second (one core)")
    print(f"decisions: { {str(k): v for k, v in summary.outcomes.items()} }")


if __name__ == "__main__":
    main()
