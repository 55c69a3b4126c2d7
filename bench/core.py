"""Benchmark the pure core: engine.core.Engine.handle over pre-encoded msgpack commands, no I/O.

    python bench/core.py [--orders 200000] [--seed 1] [--markets 2] [--repeat 3]
                                        [--json PATH] [--profile]

Rows, all over the same N pre-encoded commands in the same process:
  msgpack decode      msgpack.unpackb of each payload: the floor any decoder pays
  parse               commands.model.parse: subject split, decode, pydantic validation
  Engine.handle       the core: parse + decide + evolve (the headline figure)
  handle + encode     what the engine shell does per command before I/O: handle, then
                      events.model.encode of every event it returned

Each row runs --repeat times (a fresh Engine each time, the setup commands
folded in untimed) and reports the best and the median. Nothing here asserts a
duration; the only checks are that the core made exactly the events the
workload generator expects and the same state hash every time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from workload import BASE_TS, Workload, generate

from commands.model import parse
from engine.core import Engine, state_hash
from events.model import encode


def _fresh_engine(wl: Workload) -> Engine:
    engine = Engine()
    for seq, (subject, data) in enumerate(wl.setup, 1):
        engine.handle(seq, BASE_TS + seq * 1000, subject, data)
    return engine


def run_decode(wl: Workload) -> tuple[float, dict[str, Any]]:
    unpackb = msgpack.unpackb
    payloads = [d for _, d in wl.orders]
    t0 = time.perf_counter()
    for data in payloads:
        unpackb(data, raw=False, strict_map_key=True)
    return time.perf_counter() - t0, {}


def run_parse(wl: Workload) -> tuple[float, dict[str, Any]]:
    orders = wl.orders
    t0 = time.perf_counter()
    for subject, data in orders:
        parse(subject, data)
    return time.perf_counter() - t0, {}


def run_handle(wl: Workload) -> tuple[float, dict[str, Any]]:
    engine = _fresh_engine(wl)
    handle = engine.handle
    seq = len(wl.setup)
    events = 0
    t0 = time.perf_counter()
    for subject, data in wl.orders:
        seq += 1
        events += len(handle(seq, BASE_TS + seq * 1000, subject, data))
    elapsed = time.perf_counter() - t0
    return elapsed, {"events": events, "state_hash": state_hash(engine.state)}


def run_handle_encode(wl: Workload) -> tuple[float, dict[str, Any]]:
    engine = _fresh_engine(wl)
    handle = engine.handle
    seq = len(wl.setup)
    events = 0
    t0 = time.perf_counter()
    for subject, data in wl.orders:
        seq += 1
        for e in handle(seq, BASE_TS + seq * 1000, subject, data):
            encode(e)
            events += 1
    elapsed = time.perf_counter() - t0
    return elapsed, {"events": events, "state_hash": state_hash(engine.state)}


ROWS: list[tuple[str, Callable[[Workload], tuple[float, dict[str, Any]]]]] = [
    ("msgpack decode only", run_decode),
    ("parse (decode+validate)", run_parse),
    ("Engine.handle (core)", run_handle),
    ("handle + encode events", run_handle_encode),
]


def profile_handle(wl: Workload, top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    run_handle(wl)
    prof.disable()
    print(f"\ncProfile of one Engine.handle pass (top {top} by own time; cProfile slows everything ~2x):")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=200_000, help="measured commands (default 200000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markets", type=int, default=2)
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (default 3)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one Engine.handle pass")
    args = ap.parse_args()

    wl = generate(args.orders, args.seed, args.markets, args.accounts)
    n = len(wl.orders)
    c = wl.counts
    print(
        f"workload: {n} commands after {len(wl.setup)} setup, seed {args.seed}, markets {wl.markets}, "
        f"{wl.accounts} accounts (generated in {wl.gen_seconds:.1f}s)\n"
        f"  place resting {c['place_resting']}, place crossing {c['place_crossing']}, cancel {c['cancel']}"
        f" (+{c['place_instead_of_cancel']} places where the account had nothing to cancel)\n"
        f"  expected events {c['events'] - len(wl.setup)}: accepted {c['accepted']}, fills {c['fills']},"
        f" cancelled {c['cancelled']}, rejected {c['rejected']}; open at end {c['open_orders_end']}"
        f" in {c['book_levels_end']} levels"
    )
    expected_events = c["events"] - c["market_created"]

    results: list[dict[str, Any]] = []
    hashes: set[str] = set()
    problems: list[str] = []
    for name, fn in ROWS:
        times: list[float] = []
        extra: dict[str, Any] = {}
        for _ in range(args.repeat):
            gc.collect()
            elapsed, extra = fn(wl)
            times.append(elapsed)
            if "events" in extra:
                hashes.add(extra["state_hash"])
                if extra["events"] != expected_events:
                    problems.append(f"{name}: {extra['events']} events, generator expected {expected_events}")
        best, med = min(times), statistics.median(times)
        row = {
            "name": name,
            "best_s": round(best, 4),
            "median_s": round(med, 4),
            "orders_per_s": round(n / best),
            "orders_per_s_median": round(n / med),
            "us_per_order": round(best / n * 1e6, 2),
        }
        if "events" in extra:
            row["events"] = extra["events"]
            row["events_per_s"] = round(extra["events"] / best)
        results.append(row)
    if len(hashes) > 1:
        problems.append(f"state hash differs between runs: {sorted(hashes)}")

    print(f"\n{'row':<26}{'orders/s':>12}{'(median)':>12}{'us/order':>10}{'events/s':>12}")
    for r in results:
        ev = f"{r['events_per_s']:>12,}" if "events_per_s" in r else f"{'':>12}"
        print(f"{r['name']:<26}{r['orders_per_s']:>12,}{r['orders_per_s_median']:>12,}{r['us_per_order']:>10}{ev}")
    by = {r["name"]: r for r in results}
    core = by["Engine.handle (core)"]["us_per_order"]
    print(
        f"\ncore = {core / by['msgpack decode only']['us_per_order']:.0f}x the bare decode; "
        f"parse is {by['parse (decode+validate)']['us_per_order'] / core:.0%} of the core's time; "
        f"encoding the events adds {by['handle + encode events']['us_per_order'] - core:.1f} us/order"
    )
    print("checks: " + ("ok (events as expected, one state hash)" if not problems else "; ".join(problems)))

    if args.profile:
        profile_handle(wl, 25)

    if args.json:
        doc = {
            "bench": "core",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "args": vars(args) | {"json": str(args.json)},
            "workload": wl.summary(),
            "results": results,
            "problems": problems,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
