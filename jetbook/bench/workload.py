"""The seeded order flow every benchmark uses, and what the core makes of it.

The generator drives a private `engine.core.Engine` while it writes the
commands, and folds the events it returns into its own picture of each book
(from the events only, never from the core's internals, which change). So it
knows the order ids the engine will assign, which orders are open and who owns
them: a cancel always names a live order of the account that sends it, a
resting order never crosses and a crossing one always takes liquidity. It also
knows the exact number of events the flow must produce and the book every
market must end with, which the benchmarks check the system against.

The flow, per command after the setup (one create_market per market):
  ~25% cancel_order of a random open order of the sending account in that market,
       half by order_id, half by client_order_id (a place instead when the
       account has nothing open there);
  ~75% place_order: 70% makers quoting 1..~50 ticks behind the mid (clamped so
       they never cross), 30% takers crossing the touch by 0..~5 ticks (they
       sweep one or a few levels and may rest the remainder).
Each market's mid does a random walk, pulled back toward the book's own mid.
Quantities are 1 + an exponential of mean 6 lots.

Order ids and trade ids are per market in the core, so a market's outcome
depends only on the order of that market's own commands. Publishers may
therefore interleave markets freely (one client per market, concurrently) and
still get exactly the events counted here, as long as each market's commands
reach JB_CMD in the order they were generated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from sortedcontainers import SortedDict

from commands.client import new_msg_id
from engine.core import Engine
from events.model import Event, Fill, MarketCreated, OrderAccepted, OrderCancelled, Rejected, encode, expand
from protocol.subjects import cmd_subject, ctl_subject, wal_subject

MARKET_NAMES = ("BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOT-USD", "LTC-USD", "AVAX-USD")
START_MID = 100_000  # ticks
BASE_TS = 1_795_000_000_000_000_000  # ns; any fixed value: the core only copies it into events


def pack(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def market_names(markets: int) -> list[str]:
    return [MARKET_NAMES[i] if i < len(MARKET_NAMES) else f"MKT{i}-USD" for i in range(markets)]


@dataclass(frozen=True, slots=True)
class Cmd:
    subject: str
    data: bytes
    msg_id: str  # the Nats-Msg-Id header: commands.client.new_msg_id(), random like every jetbook client's
    market: int  # index into Flow.markets: a publisher keeps each market's commands in order
    kind: str  # "create_market", "place" or "cancel"


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


@dataclass(slots=True)
class _Book:
    """One market's levels as the events describe them: price -> [open qty, orders]."""

    bids: SortedDict = field(default_factory=SortedDict)
    asks: SortedDict = field(default_factory=SortedDict)

    def side(self, side: str) -> SortedDict:
        return self.bids if side == "buy" else self.asks

    def change(self, side: str, price: int, qty: int, orders: int) -> None:
        levels = self.side(side)
        level = levels.get(price)
        if level is None:
            level = levels[price] = [0, 0]
        level[0] += qty
        level[1] += orders
        if level[1] == 0:
            del levels[price]

    def best_bid(self) -> int | None:
        return int(self.bids.peekitem(-1)[0]) if self.bids else None

    def best_ask(self) -> int | None:
        return int(self.asks.peekitem(0)[0]) if self.asks else None


class Flow:
    """A resumable seeded flow: `setup` once, then `take(n)` as often as needed, each continuing the last."""

    def __init__(
        self,
        seed: int = 1,
        markets: int = 4,
        accounts: int = 100,
        *,
        keep_events: bool = False,
        names: list[str] | None = None,  # instead of market_names(markets): the shard bench picks its own
    ) -> None:
        self.seed = seed
        self.markets = names if names is not None else market_names(markets)
        self.accounts = accounts
        self.keep_events = keep_events
        # msg_id -> the encoded events of that command, for the transport floor (same count, same sizes)
        self.events_by_msg_id: dict[str, list[tuple[str, bytes]]] = {}
        self.gen_seconds = 0.0
        self.counts: dict[str, int] = dict.fromkeys(
            ("place_resting", "place_crossing", "place_instead_of_cancel", "cancel", "events", "accepted",
             "fills", "cancelled", "rejected", "market_created", "other_events"),
            0,
        )  # fmt: skip
        self._rng = random.Random(seed)
        self._engine = Engine()
        self._seq = 0
        self._books = {m: _Book() for m in self.markets}
        self._mids = dict.fromkeys(self.markets, START_MID)
        self._open = {(m, a): _OpenSet() for m in self.markets for a in range(accounts)}
        self._owner: dict[tuple[str, int], tuple[int, str]] = {}  # (market, order id) -> (account, client id)
        self._next_coid = [0] * accounts
        self.setup: list[Cmd] = []
        for i, m in enumerate(self.markets):
            data = pack({"type": "create_market", "market_id": m, "base": m.split("-")[0], "quote": "USD"})
            cmd = Cmd(ctl_subject(m), data, new_msg_id(), i, "create_market")
            self._run(cmd)
            self.setup.append(cmd)

    # --- what the core makes of it -------------------------------------------------------------

    @property
    def last_cmd_seq(self) -> int:
        return self._seq

    @property
    def events(self) -> int:
        """Events every command so far must produce, setup and checkpoints included: JB_EVT's last seq."""
        return self.counts["events"]

    def _run(self, cmd: Cmd) -> None:
        self._seq += 1
        events = self._engine.handle(self._seq, BASE_TS + self._seq * 1000, cmd.subject, cmd.data)
        self.counts["events"] += len(events)
        if self.keep_events:
            self.events_by_msg_id[cmd.msg_id] = [(wal_subject(e.market_id, e.type), encode(e)) for e in events]
        self._fold(events)

    def _fold(self, events: Iterable[Event]) -> None:
        counts = self.counts
        for e in expand(list(events)):  # a compact batch's runs as their single-order events
            if isinstance(e, OrderAccepted):
                counts["accepted"] += 1
                if e.resting_qty > 0 and e.price is not None:
                    acct = int(e.account_id[1:])
                    self._open[(e.market_id, acct)].add(e.order_id)
                    self._owner[(e.market_id, e.order_id)] = (acct, e.client_order_id)
                    self._books[e.market_id].change(e.side, e.price, e.resting_qty, 1)
            elif isinstance(e, Fill):
                counts["fills"] += 1
                maker_side = "sell" if e.taker_side == "buy" else "buy"
                gone = e.maker_remaining == 0
                self._books[e.market_id].change(maker_side, e.price, -e.qty, -1 if gone else 0)
                if gone:
                    acct, _ = self._owner.pop((e.market_id, e.maker_order_id))
                    self._open[(e.market_id, acct)].discard(e.maker_order_id)
            elif isinstance(e, OrderCancelled):
                counts["cancelled"] += 1
                owner = self._owner.pop((e.market_id, e.order_id), None)
                if owner is not None and e.price is not None:  # it was resting
                    self._open[(e.market_id, owner[0])].discard(e.order_id)
                    self._books[e.market_id].change(e.side, e.price, -e.cancelled_qty, -1)
            elif isinstance(e, Rejected):
                counts["rejected"] += 1
            elif isinstance(e, MarketCreated):
                counts["market_created"] += 1
            else:
                counts["other_events"] += 1  # checkpoints, and kinds this flow does not look at

    def book_levels(self) -> dict[tuple[str, str, int], tuple[int, int]]:
        """(market, side, price) -> (open qty, orders): what the read model's book_levels must hold."""
        out: dict[tuple[str, str, int], tuple[int, int]] = {}
        for m, book in self._books.items():
            for side in ("buy", "sell"):
                for price, (qty, orders) in book.side(side).items():
                    out[(m, side, int(price))] = (qty, orders)
        return out

    def open_orders(self) -> int:
        return len(self._owner)

    # --- the flow -------------------------------------------------------------------------------

    def take(self, n: int) -> list[Cmd]:
        """The next n commands of the flow."""
        started = time.perf_counter()
        out = [self._next() for _ in range(n)]
        self.gen_seconds += time.perf_counter() - started
        return out

    def _next(self) -> Cmd:
        rng = self._rng
        mi = rng.randrange(len(self.markets))
        m = self.markets[mi]
        acct = rng.randrange(self.accounts)
        account = f"a{acct}"
        book = self._books[m]
        best_bid, best_ask = book.best_bid(), book.best_ask()
        mid = self._mids[m] + rng.choice((-2, -1, -1, 0, 0, 0, 1, 1, 2))
        if best_bid is not None and best_ask is not None:
            mid += ((best_bid + best_ask) // 2 - mid) // 10
        self._mids[m] = mid = max(mid, 1_000)
        subject = cmd_subject(m, account)

        if rng.random() < 0.25:
            oid = self._open[(m, acct)].pick(rng)
            if oid is not None:
                self.counts["cancel"] += 1
                if rng.random() < 0.5:
                    body: dict[str, Any] = {"type": "cancel_order", "order_id": oid}
                else:
                    body = {"type": "cancel_order", "client_order_id": self._owner[(m, oid)][1]}
                cmd = Cmd(subject, pack(body), new_msg_id(), mi, "cancel")
                self._run(cmd)
                return cmd
            self.counts["place_instead_of_cancel"] += 1

        side = "buy" if rng.random() < 0.5 else "sell"
        qty = 1 + int(rng.expovariate(1 / 6))
        if rng.random() < 0.30:  # a taker: through the touch by a few ticks
            through = int(rng.expovariate(1 / 2))
            if side == "buy":
                price = (best_ask if best_ask is not None else mid + 1) + through
            else:
                price = (best_bid if best_bid is not None else mid - 1) - through
            self.counts["place_crossing"] += 1
        else:  # a maker: behind the mid, never through the touch
            behind = 1 + min(int(rng.expovariate(1 / 10)), 200)
            if side == "buy":
                price = mid - behind
                if best_ask is not None:
                    price = min(price, best_ask - 1)
            else:
                price = mid + behind
                if best_bid is not None:
                    price = max(price, best_bid + 1)
            self.counts["place_resting"] += 1
        self._next_coid[acct] += 1
        coid = f"c{self._next_coid[acct]}"
        body = {"type": "place_order", "client_order_id": coid, "side": side, "price": max(price, 1), "qty": qty}
        cmd = Cmd(subject, pack(body), new_msg_id(), mi, "place")
        self._run(cmd)
        return cmd

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "markets": self.markets,
            "accounts": self.accounts,
            "commands": self._seq,
            **self.counts,
            "open_orders": self.open_orders(),
            "book_levels": sum(len(b.bids) + len(b.asks) for b in self._books.values()),
        }


def avg_size(cmds: Iterable[Cmd]) -> float:
    sizes = [len(c.data) for c in cmds]
    return sum(sizes) / len(sizes) if sizes else 0.0


if __name__ == "__main__":  # a quick look: python -m jetbook.bench.workload [N] [seed] [markets]
    import json
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    flow = Flow(int(sys.argv[2]) if len(sys.argv) > 2 else 1, int(sys.argv[3]) if len(sys.argv) > 3 else 4)
    cmds = flow.take(n)
    print(json.dumps({**flow.summary(), "payload_bytes_avg": round(avg_size(cmds), 1),
                      "gen_seconds": round(flow.gen_seconds, 2)}, indent=2))  # fmt: skip
