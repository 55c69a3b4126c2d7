"""The pure core on a seeded mixed workload: 70% place, 25% cancel, 5% amend, prices around a moving mid.

Prints commands/s through `Engine.handle` (parse + decide + evolve, no I/O)
next to a bare loop that only msgpack-decodes the same bytes, in the same run,
and the command line that produced the figures. Not a test: nothing asserts a
speed.

    python -m jetbook.bench.core_mix --commands 300000 --seed 1
"""

from __future__ import annotations

import argparse
import random
from collections import Counter

import msgpack

from engine.core import Engine
from jetbook.bench.core import measure
from jetbook.bench.workload import Cmd


def workload(n: int, seed: int, markets: int, accounts: int) -> list[tuple[str, bytes]]:
    """(subject, payload) of each command: one create_market per market, then the mix."""
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
    cmds = [
        Cmd(subject, data, "", 0, "")
        for subject, data in workload(args.commands, args.seed, args.markets, args.accounts)
    ]
    setup, orders = cmds[: args.markets], cmds[args.markets :]
    # The same timing loops as `jetbook bench` (jetbook/bench/core.py), on this workload.
    figures, problems = measure(setup, orders, ["decode", "handle"], args.runs, None)
    print(f"command: python -m jetbook.bench.core_mix --commands {args.commands} --seed {args.seed} "
          f"--markets {args.markets} --accounts {args.accounts} --runs {args.runs}")  # fmt: skip
    print(f"commands: {len(orders):,} (70% place, 25% cancel, 5% amend) after {len(setup)} create_market")
    for key in ("decode", "handle"):
        f = figures[key]
        print(f"{f['title']:<28} {f['orders_per_s_median']:>12,} commands/s median of {f['runs']} "
              f"(best {f['orders_per_s']:,})")  # fmt: skip
    kinds: Counter[str] = Counter()
    engine = Engine()
    for seq, c in enumerate(cmds, 1):
        kinds.update(e.type if e.type != "rejected" else f"rejected:{e.reason}"  # type: ignore[attr-defined]
                     for e in engine.handle(seq, seq, c.subject, c.data))  # fmt: skip
    print("events: " + ", ".join(f"{k} {v:,}" for k, v in kinds.most_common()))
    for problem in problems:
        print(f"problem: {problem}")


if __name__ == "__main__":
    main()
