"""How long load_rules takes on 500 rule files of 10 rules each (target: under 2 s).

Run: .venv/bin/python -m bench.bench_validate [--files 500] [--rules 10] [--distinct]

Each run is one cold load in a fresh process, as ``trigmail validate`` does it: nothing is
cached yet. By default every rule has one Jinja string of its own (the greeting, which names
its rule) and two that every rule repeats, which loading parses once and shares. With
``--distinct`` all three strings differ from rule to rule, in their expressions too, so that
no rule shares any parsing with another: the figure for rules that have nothing in common.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from trigmail.rules.loader import load_rules

_RULE = """\
  - id: rule-{file}-{n}
    description: Generated rule {n} of file {file}
    on: [cart_abandoned, checkout_started]
    when:
      properties.cart_value: {{gte: {n}}}
      user.country: {{in: [PT, ES, "NO"]}}
      any:
        - {{properties.coupon: {{exists: false}}}}
        - {{email: {{matches: "@example\\\\.com$"}}}}
    delay: 1h30m
    cancel_on: [order_completed, {{event: cart_emptied, match: properties.cart_id}}]
    cooldown: 24h
    max_late: 6h
    dedupe: "{{rule}}:{{user_id}}:{{date}}"
    send_window: {{from: "09:00", to: "20:00", timezone: user.timezone}}
    send:
      template: d-{file}-{n}
      data:
{data}
      category: cart-recovery
      asm_group: 1234
"""

_DATA_SHARED = """\
        first_name: "{{{{ user.first_name }}}}"
        cart_url: "{{{{ properties.cart_url }}}}"
        greeting: "Hi {{{{ user.first_name | default('there') }}}} ({file}/{n})"
"""

# Each expression names its rule, so neither the text nor the shape of any string repeats.
_DATA_DISTINCT = """\
        first_name: "{{{{ user.first_name_{file}_{n} }}}}"
        cart_url: "{{{{ properties.cart_url ~ '?r={file}-{n}' }}}}"
        greeting: "Hi {{{{ user.first_name | default('there {n}') }}}} ({file}/{n})"
"""


def write_rules(directory: Path, files: int, rules: int, *, distinct: bool = False) -> None:
    """Write ``files`` rule files of ``rules`` distinct rules each into ``directory``."""
    data = _DATA_DISTINCT if distinct else _DATA_SHARED
    for file in range(files):
        body = "".join(
            _RULE.format(file=file, n=n, data=data.format(file=file, n=n).rstrip("\n"))
            for n in range(rules)
        )
        (directory / f"rules-{file:04d}.yaml").write_text("rules:\n" + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--rules", type=int, default=10)
    parser.add_argument(
        "--distinct", action="store_true", help="no Jinja string repeats from rule to rule"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        write_rules(directory, args.files, args.rules, distinct=args.distinct)
        started_cpu_s = time.process_time()
        started_s = time.perf_counter()
        result = load_rules(directory)
        elapsed_s = time.perf_counter() - started_s
        cpu_s = time.process_time() - started_cpu_s
    if result.problems:
        raise SystemExit(f"generated rules are not clean: {result.problems[0]}")
    command = f".venv/bin/python -m bench.bench_validate --files {args.files} --rules {args.rules}"
    if args.distinct:
        command += " --distinct"
    strings = "all Jinja strings distinct" if args.distinct else "1 of 3 Jinja strings distinct"
    print(
        f"load_rules: {args.files} files x {args.rules} rules = {result.rules_written} rules "
        f"({strings}) in {elapsed_s:.2f} s wall, {cpu_s:.2f} s CPU  (command: {command})"
    )


if __name__ == "__main__":
    main()
