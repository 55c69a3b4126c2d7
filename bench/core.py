"""The pure core's four loops over the same pre-encoded commands, no I/O (the loops live in jetbook/bench/core.py).

    python bench/core.py [--orders 200000] [--seed 1] [--markets 4] [--repeat 3] [--json PATH] [--profile]

Rows: msgpack decode only (the floor of any decoder), parse (decode + pydantic
validation), Engine.handle (the core: the headline figure, also in `jetbook
bench`), handle + encode (what the engine shell does per command before any
I/O). Best and median of --repeat runs. --profile adds a cProfile of one
Engine.handle pass.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

from jetbook.bench.core import LOOPS, measure, run_handle
from jetbook.bench.workload import Flow


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markets", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    flow = Flow(args.seed, args.markets)
    orders = flow.take(args.orders)
    print(f"flow: {flow.summary()} (generated in {flow.gen_seconds:.1f}s)")
    rows, problems = measure(flow.setup, orders, list(LOOPS), args.repeat, flow.events - len(flow.setup))
    print(f"\n{'loop':<28}{'orders/s':>12}{'(median)':>12}{'us/order':>10}{'events/s':>12}")
    for r in rows.values():
        ev = f"{r['events_per_s']:>12,}" if "events_per_s" in r else f"{'':>12}"
        print(f"{r['title']:<28}{r['orders_per_s']:>12,}{r['orders_per_s_median']:>12,}{r['us_per_order']:>10}{ev}")
    print("checks: " + ("ok (events as expected, one state hash)" if not problems else "; ".join(problems)))
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_handle(flow.setup, orders)
        prof.disable()
        print("\ncProfile of one Engine.handle pass (top 25 by own time; cProfile slows everything ~2x):")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    if args.json:
        doc = {
            "bench": "core",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["python", *sys.argv]),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
            "workload": flow.summary(),
            "results": rows,
            "problems": problems,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
