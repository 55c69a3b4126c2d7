"""The pure core's loops: the same raw commands through msgpack alone, parse, and Engine.handle.

    python -m jetbook.bench.core [--orders 200000] [--seed 1] [--markets 4] [--repeat 3] [--json PATH] [--profile]

`jetbook bench` runs the decode and handle loops for its core figure; run as a
module, this adds the parse loop (decode + validation alone) and, with
--profile, a cProfile of one Engine.handle pass. `Engine.handle` encodes its
events too, so the handle loop is everything the engine does per command before
any I/O.

Each loop runs over pre-encoded commands in this process, with no I/O, a fresh
`Engine` per run and the setup commands folded in untimed. The figure is the
best of `repeat` runs (the least disturbed by whatever else the machine did);
the median is kept too. The only checks: every handle run made the events the
flow generator expects, and all runs end in the same state hash.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from commands.model import parse
from engine.core import Engine, state_hash
from jetbook.bench.workload import BASE_TS, Cmd, Flow


@dataclass(frozen=True)
class Loop:
    key: str
    title: str
    run: Callable[[Sequence[Cmd], Sequence[Cmd]], tuple[float, int, str]]  # (seconds, events, state hash)


def _fresh(setup: Sequence[Cmd]) -> Engine:
    engine = Engine()
    for seq, c in enumerate(setup, 1):
        engine.handle(seq, BASE_TS + seq * 1000, c.subject, c.data)
    return engine


def run_decode(setup: Sequence[Cmd], orders: Sequence[Cmd]) -> tuple[float, int, str]:
    unpackb = msgpack.unpackb
    payloads = [c.data for c in orders]
    t0 = time.perf_counter()
    for data in payloads:
        unpackb(data, raw=False)
    return time.perf_counter() - t0, 0, ""


def run_parse(setup: Sequence[Cmd], orders: Sequence[Cmd]) -> tuple[float, int, str]:
    items = [(c.subject, c.data) for c in orders]
    t0 = time.perf_counter()
    for subject, data in items:
        parse(subject, data)
    return time.perf_counter() - t0, 0, ""


def run_handle(setup: Sequence[Cmd], orders: Sequence[Cmd]) -> tuple[float, int, str]:
    engine = _fresh(setup)
    handle = engine.handle
    seq = len(setup)
    items = [(c.subject, c.data) for c in orders]
    events = 0
    t0 = time.perf_counter()
    for subject, data in items:
        seq += 1
        events += len(handle(seq, BASE_TS + seq * 1000, subject, data))
    elapsed = time.perf_counter() - t0
    return elapsed, events, state_hash(engine.state)


LOOPS = {
    loop.key: loop
    for loop in (
        Loop("decode", "msgpack decode only", run_decode),
        Loop("parse", "parse (decode + validate)", run_parse),
        Loop("handle", "Engine.handle (the core: parse, decide, evolve, encode)", run_handle),
    )
}


def measure(
    setup: Sequence[Cmd], orders: Sequence[Cmd], keys: Sequence[str], repeat: int, expected_events: int | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """{key: figures} for each loop, and the problems found (wrong event count, differing state hashes)."""
    n = len(orders)
    out: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    hashes: set[str] = set()
    for key in keys:
        loop = LOOPS[key]
        times: list[float] = []
        events = 0
        for _ in range(max(1, repeat)):
            gc.collect()
            elapsed, events, digest = loop.run(setup, orders)
            times.append(elapsed)
            if digest:
                hashes.add(digest)
                if expected_events is not None and events != expected_events:
                    problems.append(f"{loop.title}: {events} events, the flow expects {expected_events}")
        best, med = min(times), statistics.median(times)
        row: dict[str, Any] = {
            "title": loop.title,
            "runs": len(times),
            "best_s": round(best, 4),
            "median_s": round(med, 4),
            "orders_per_s": round(n / best),
            "orders_per_s_median": round(n / med),
            "us_per_order": round(best / n * 1e6, 2),
        }
        if events:
            row["events"] = events
            row["events_per_s"] = round(events / best)
        out[key] = row
    if len(hashes) > 1:
        problems.append(f"the state hash differs between runs: {sorted(hashes)}")
    return out, problems


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
    print(f"\n{'loop':<58}{'orders/s':>12}{'(median)':>12}{'us/order':>10}{'events/s':>12}")
    for r in rows.values():
        ev = f"{r['events_per_s']:>12,}" if "events_per_s" in r else f"{'':>12}"
        print(f"{r['title']:<58}{r['orders_per_s']:>12,}{r['orders_per_s_median']:>12,}{r['us_per_order']:>10}{ev}")
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
            "command": " ".join(["python", "-m", "jetbook.bench.core", *sys.argv[1:]]),
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
