"""A seeded, pre-encoded command workload, shared by bench/core.py and bench/pipeline.py.

The generator drives a private `engine.core.Engine` while it writes the
commands, so it knows the order ids the engine will assign and which orders are
still open (it follows the events: OrderAccepted rests, Fill with
maker_remaining == 0 and OrderCancelled remove). A cancel therefore always
names a live order of the account that sends it, a "resting" limit order never
crosses and a "crossing" one always takes liquidity. The same engine also gives
the exact number of events the workload must produce, which the benchmarks use
to check the system under test did all the work.

Mix (per command after the setup):
  ~25% cancel_order by order_id of a random open order of the sending account
       (a place instead when that account has nothing open in that market),
  ~75% place_order gtc: 70% of them resting (1..~50 ticks behind the touch,
       clamped so they never cross), 30% crossing (through the best opposite
       price by 0..~5 ticks, so they sweep one or a few levels and may rest the
       remainder).
There is no amend command in jetbook, so the "amend" share of the brief is
plain places. Each market's mid does a random walk and is pulled back to the
book's own mid, so prices keep moving without the book drifting apart.

Command sequence numbers are those JB_CMD will give on an empty stream: the
setup commands (one create_market per market) are 1..S and the N measured
commands are S+1..S+N.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from commands.subjects import HDR_MSG_ID, cmd_subject, ctl_subject
from engine.core import Engine
from events.model import Fill, MarketCreated, OrderAccepted, OrderCancelled, Rejected

MARKET_NAMES = ("BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOT-USD")
START_MID = 100_000  # ticks
BASE_TS = 1_795_000_000_000_000_000  # ns; any fixed value: the core only copies it into events


def pack(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


class _OpenSet:
    """Open order ids with O(1) add, remove and uniform random pick."""

    __slots__ = ("index", "items")

    def __init__(self) -> None:
        self.items: list[int] = []
        self.index: dict[int, int] = {}

    def add(self, oid: int) -> None:
        self.index[oid] = len(self.items)
        self.items.append(oid)

    def discard(self, oid: int) -> None:
        i = self.index.pop(oid, None)
        if i is None:
            return
        last = self.items.pop()
        if last != oid:
            self.items[i] = last
            self.index[last] = i

    def pick(self, rng: random.Random) -> int | None:
        return self.items[rng.randrange(len(self.items))] if self.items else None


@dataclass
class Workload:
    seed: int
    markets: list[str]
    accounts: int
    setup: list[tuple[str, bytes]]  # create_market commands, JB_CMD seq 1..S
    orders: list[tuple[str, bytes]]  # the N measured commands, JB_CMD seq S+1..S+N
    msg_ids: list[str]  # Nats-Msg-Id for setup + orders, in order (as commands/client.py derives them)
    counts: dict[str, int] = field(default_factory=dict)  # what was generated and what the core made of it
    # the book the core ends with: (market, side, price) -> (open qty, orders), as the read model's book_levels
    book_levels: dict[tuple[str, str, int], tuple[int, int]] = field(default_factory=dict)
    gen_seconds: float = 0.0

    @property
    def commands(self) -> list[tuple[str, bytes]]:
        return self.setup + self.orders

    @property
    def last_cmd_seq(self) -> int:
        return len(self.setup) + len(self.orders)

    def headers(self, i: int) -> dict[str, str]:
        """Headers of command i (0-based over setup + orders)."""
        return {HDR_MSG_ID: self.msg_ids[i]}

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "markets": self.markets,
            "accounts": self.accounts,
            "setup_commands": len(self.setup),
            "commands": len(self.orders),
            "payload_bytes_avg": round(sum(len(d) for _, d in self.orders) / max(len(self.orders), 1), 1),
            **self.counts,
        }


def generate(orders: int, seed: int = 1, markets: int = 2, accounts: int = 100) -> Workload:
    started = time.perf_counter()
    rng = random.Random(seed)
    names = [MARKET_NAMES[i] if i < len(MARKET_NAMES) else f"MKT{i}-USD" for i in range(markets)]
    engine = Engine()
    setup: list[tuple[str, bytes]] = []
    msg_ids: list[str] = []
    counts = dict.fromkeys(
        (
            "place_resting",
            "place_crossing",
            "place_instead_of_cancel",
            "cancel",
            "events",
            "accepted",
            "fills",
            "cancelled",
            "rejected",
            "market_created",
        ),
        0,
    )

    # open[(market, account)] -> open order ids; owner[(market, order_id)] -> account
    open_by: dict[tuple[str, int], _OpenSet] = {(m, a): _OpenSet() for m in names for a in range(accounts)}
    owner: dict[tuple[str, int], int] = {}
    seq = 0

    def run(subject: str, data: bytes) -> None:
        nonlocal seq
        seq += 1
        events = engine.handle(seq, BASE_TS + seq * 1000, subject, data)
        counts["events"] += len(events)
        for e in events:
            if isinstance(e, OrderAccepted):
                counts["accepted"] += 1
                if e.resting_qty > 0:
                    acct = int(e.account_id[1:])
                    open_by[(e.market_id, acct)].add(e.order_id)
                    owner[(e.market_id, e.order_id)] = acct
            elif isinstance(e, Fill):
                counts["fills"] += 1
                if e.maker_remaining == 0:
                    acct = owner.pop((e.market_id, e.maker_order_id))
                    open_by[(e.market_id, acct)].discard(e.maker_order_id)
            elif isinstance(e, OrderCancelled):
                counts["cancelled"] += 1
                acct = owner.pop((e.market_id, e.order_id))
                open_by[(e.market_id, acct)].discard(e.order_id)
            elif isinstance(e, Rejected):
                counts["rejected"] += 1
            elif isinstance(e, MarketCreated):
                counts["market_created"] += 1

    for m in names:
        subject = ctl_subject(m)
        data = pack({"type": "create_market", "market_id": m, "base": m.split("-")[0], "quote": "USD"})
        setup.append((subject, data))
        msg_ids.append(f"bench.create.{m}")
        run(subject, data)

    mids = dict.fromkeys(names, START_MID)
    next_coid = [0] * accounts
    out: list[tuple[str, bytes]] = []
    for _ in range(orders):
        m = names[rng.randrange(markets)]
        acct = rng.randrange(accounts)
        account = f"a{acct}"
        book = engine.state.markets[m].book
        best_bid = -book.bids.peekitem(0)[0] if book.bids else None
        best_ask = book.asks.peekitem(0)[0] if book.asks else None
        # moving mid: a random walk, pulled a tenth of the way back to the book's mid
        mid = mids[m] + rng.choice((-2, -1, -1, 0, 0, 0, 1, 1, 2))
        if best_bid is not None and best_ask is not None:
            mid += ((best_bid + best_ask) // 2 - mid) // 10
        mids[m] = mid = max(mid, 1_000)
        subject = cmd_subject(m, account)

        if rng.random() < 0.25:
            oid = open_by[(m, acct)].pick(rng)
            if oid is not None:
                counts["cancel"] += 1
                out.append((subject, pack({"type": "cancel_order", "order_id": oid})))
                msg_ids.append(f"bench.cancel.{m}.{account}.{oid}")
                run(*out[-1])
                continue
            counts["place_instead_of_cancel"] += 1

        side = "buy" if rng.random() < 0.5 else "sell"
        qty = 1 + int(rng.expovariate(1 / 6))
        if rng.random() < 0.30:  # crossing: through the touch by a few ticks
            through = int(rng.expovariate(1 / 2))
            if side == "buy":
                price = (best_ask if best_ask is not None else mid + 1) + through
            else:
                price = (best_bid if best_bid is not None else mid - 1) - through
            counts["place_crossing"] += 1
        else:  # resting: behind the mid, never through the touch
            behind = 1 + min(int(rng.expovariate(1 / 10)), 200)
            if side == "buy":
                price = mid - behind
                if best_ask is not None:
                    price = min(price, best_ask - 1)
            else:
                price = mid + behind
                if best_bid is not None:
                    price = max(price, best_bid + 1)
            counts["place_resting"] += 1
        price = max(price, 1)
        next_coid[acct] += 1
        coid = f"c{next_coid[acct]}"
        out.append(
            (
                subject,
                pack(
                    {
                        "type": "place_order",
                        "client_order_id": coid,
                        "side": side,
                        "price": price,
                        "qty": qty,
                        "tif": "gtc",
                    }
                ),
            )
        )
        msg_ids.append(f"place.{m}.{account}.{coid}")
        run(*out[-1])

    counts["open_orders_end"] = sum(len(s.items) for s in open_by.values())
    counts["book_levels_end"] = sum(len(mk.book.bids) + len(mk.book.asks) for mk in engine.state.markets.values())
    counts["last_cmd_seq"] = seq
    wl = Workload(seed, names, accounts, setup, out, msg_ids, counts)
    for mk in engine.state.markets.values():
        for side, levels in (("buy", mk.book.bids), ("sell", mk.book.asks)):
            for key, level in levels.items():
                wl.book_levels[(mk.market_id, side, abs(key))] = (sum(o.qty for o in level.values()), len(level))
    wl.gen_seconds = time.perf_counter() - started
    return wl


if __name__ == "__main__":  # quick look: python bench/workload.py [N] [seed]
    import json
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    s = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    w = generate(n, s)
    print(json.dumps({**w.summary(), "gen_seconds": round(w.gen_seconds, 2)}, indent=2))
