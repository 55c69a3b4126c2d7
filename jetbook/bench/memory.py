"""RSS of a core holding N resting orders, in a process of its own.

    python -m jetbook.bench.memory --resting 1000000 [--markets 4]

Prints one JSON line. A fresh process, so nothing else the benchmark built
(the flow, the histograms) is in its heap: it imports what `jetbook engine`
imports, builds an `Engine` with the markets, reads its RSS, then feeds it N
place orders that never cross (bids below the mid, asks above, over a few
thousand price levels per side, from 1000 accounts) through `Engine.handle`,
as the engine would, and reads the RSS again. Each command is packed just
before it is handled and dropped after, so only what the core keeps is
counted: the order, its place in its level, the client order id index. The
core's own periodic checkpoints (a state hash every CHECKPOINT_EVERY events)
run as in production; the peak RSS (VmHWM) shows what they cost on the way.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import msgpack

import engine.service  # noqa: F401  (what `jetbook engine` has loaded before it holds any order)
from engine.core import Engine
from events.model import OrderAccepted, expand
from jetbook.bench.procs import rss_bytes
from jetbook.bench.workload import BASE_TS, START_MID, market_names
from protocol.subjects import cmd_subject, ctl_subject

LEVELS = 4000  # price levels per side per market


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(resting: int, markets: int) -> dict[str, object]:
    names = market_names(markets)
    engine = Engine()
    seq = 0
    for m in names:
        seq += 1
        data = msgpack.packb({"type": "create_market", "market_id": m, "base": m.split("-")[0], "quote": "USD"})
        engine.handle(seq, BASE_TS + seq, ctl_subject(m), data)
    subjects = [[cmd_subject(m, f"a{a}") for a in range(1000)] for m in names]
    gc.collect()
    before = rss_bytes()
    accepted = 0
    t0 = time.perf_counter()
    packb = msgpack.packb
    for i in range(resting):
        mi = i % markets
        buy = (i // markets) % 2 == 0
        offset = 1 + (i // (2 * markets)) % LEVELS
        body = {
            "type": "place_order",
            "client_order_id": f"r{i}",
            "side": "buy" if buy else "sell",
            "price": START_MID - offset if buy else START_MID + offset,
            "qty": 1 + i % 10,
        }
        seq += 1
        for e in expand(engine.handle(seq, BASE_TS + seq, subjects[mi][i % 1000], packb(body))):
            if isinstance(e, OrderAccepted) and e.resting_qty == e.qty:
                accepted += 1
    elapsed = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    return {
        "resting_orders": accepted,
        "markets": markets,
        "levels_per_side": min(LEVELS, max(1, resting // (2 * markets))),
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_peak_bytes": peak_rss_bytes(),
        "bytes_per_order": round((after - before) / max(accepted, 1), 1),
        "fill_seconds": round(elapsed, 2),
        "orders_per_s": round(resting / elapsed) if elapsed > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resting", type=int, default=1_000_000)
    ap.add_argument("--markets", type=int, default=4)
    args = ap.parse_args(argv)
    result = measure(args.resting, args.markets)
    print(json.dumps(result))
    return 0 if result["resting_orders"] == args.resting else 1


if __name__ == "__main__":
    sys.exit(main())
