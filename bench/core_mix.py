"""The pure core on a seeded mixed workload: 70% place, 25% cancel, 5% amend, prices around a moving mid.

Prints commands/s through `Engine.handle` (parse + decide + evolve, no I/O)
next to a bare loop that only msgpack-decodes the same bytes, in the same run,
and the command line that produced the figures. Not a test: nothing asserts a
speed.

    python bench/core_mix.py --commands 300000 --seed 1
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core import Engine


def workload(n: int, seed: int, markets: int, accounts: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    pack = msgpack.Packer(use_bin_type=True).pack
    out: list[tuple[str, bytes]] = []
    mids = {}
    for i in range(markets):
        m = f"M{i}"
        mids[m] = 10_000
        out.append((f"jb.ctl.{m}", pack({"type": "create_market", "market_id": m, "base": "B", "quote": "Q"})))
    placed: list[tuple[str, str, str]] = []  # (market, account, coid) of every place, for cancels and amends
    for i in range(n):
        m = f"M{rng.randrange(markets)}"
        mids[m] = max(100, mids[m] + rng.choice((-1, 0, 0, 1)))
        mid = mids[m]
        r = rng.random()
        if r < 0.70 or not placed:
            account = f"a{rng.randrange(accounts)}"
            coid = f"o{i}"
            side = "buy" if rng.random() < 0.5 else "sell"
            # Mostly passive quotes a few ticks off the mid; about one in five crosses it.
            offset = rng.randint(-2, 10)
            price = mid - offset if side == "buy" else mid + offset
            body = {"type": "place_order", "client_order_id": coid, "side": side, "price": price,
                    "qty": rng.randint(1, 20)}  # fmt: skip
            if rng.random() < 0.05:
                body["tif"] = "ioc"
            placed.append((m, account, coid))
            out.append((f"jb.cmd.{m}.{account}", pack(body)))
        elif r < 0.95:
            m, account, coid = placed[rng.randrange(max(0, len(placed) - 2000), len(placed))]
            out.append((f"jb.cmd.{m}.{account}", pack({"type": "cancel_order", "client_order_id": coid})))
        else:
            m, account, coid = placed[rng.randrange(max(0, len(placed) - 2000), len(placed))]
            body = {"type": "amend_order", "client_order_id": coid}
            if rng.random() < 0.5:
                body["qty"] = rng.randint(1, 10)
            else:
                body["price"] = mids[m] + rng.randint(-5, 5)
            out.append((f"jb.cmd.{m}.{account}", pack(body)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markets", type=int, default=4)
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cmds = workload(args.commands, args.seed, args.markets, args.accounts)
    unpack = msgpack.unpackb
    decode_rates, core_rates = [], []
    kinds: Counter[str] = Counter()
    for run in range(args.runs):
        t0 = time.perf_counter()
        for _, data in cmds:
            unpack(data, raw=False)
        decode_rates.append(len(cmds) / (time.perf_counter() - t0))
        engine = Engine()
        handle = engine.handle
        t0 = time.perf_counter()
        for seq, (subject, data) in enumerate(cmds, 1):
            handle(seq, seq, subject, data)
        core_rates.append(len(cmds) / (time.perf_counter() - t0))
        if run == 0:
            engine = Engine()
            for seq, (subject, data) in enumerate(cmds, 1):
                kinds.update(e.TYPE if e.TYPE != "rejected" else f"rejected:{e.reason}"  # type: ignore[attr-defined]
                             for e in engine.handle(seq, seq, subject, data))  # fmt: skip
    decode_rates.sort()
    core_rates.sort()
    print(f"command: python bench/core_mix.py --commands {args.commands} --seed {args.seed} "
          f"--markets {args.markets} --accounts {args.accounts} --runs {args.runs}")  # fmt: skip
    print(f"commands: {len(cmds):,} (70% place, 25% cancel, 5% amend)")
    print(f"bare msgpack decode : {decode_rates[len(decode_rates) // 2]:>12,.0f} commands/s (median of {args.runs})")
    print(f"core (parse+decide+evolve): {core_rates[len(core_rates) // 2]:>12,.0f} commands/s (median; "
          f"range {core_rates[0]:,.0f}-{core_rates[-1]:,.0f})")  # fmt: skip
    print("events: " + ", ".join(f"{k} {v:,}" for k, v in kinds.most_common()))


if __name__ == "__main__":
    main()
