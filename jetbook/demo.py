"""The order-book reference scenario, run against a live stack through NATS.

alice sells 10 @ 300000 and 5 @ 301000; bob buys 8 @ 299000 and 15 @ 300500.
Exactly one fill: bob's 300500 bid takes 10 from alice's 300000 ask at 300000,
and bob's remaining 5 rests at 300500.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.nuid import NUID

from commands.client import CommandClient
from engine.core import Engine
from events.model import Event, Fill, MarketCreated, OrderAccepted, OrdersAccepted, Rejected, expand
from events.watch import EventWatcher
from protocol.streams import market_evt_stream
from protocol.vocab import Side

ORDERS: list[tuple[str, Side, int, int]] = [
    ("alice", "sell", 300_000, 10),
    ("alice", "sell", 301_000, 5),
    ("bob", "buy", 299_000, 8),
    ("bob", "buy", 300_500, 15),
]


@dataclass
class DemoResult:
    market_id: str
    events: list[Event] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    bids: list[tuple[int, int]] = field(default_factory=list)
    asks: list[tuple[int, int]] = field(default_factory=list)


async def run_demo(js: Any, market: str = "ETH-USDC", say: Callable[[str], None] = print) -> DemoResult:
    client = CommandClient(js)
    # A stack that already ran the demo has ETH-USDC with orders on it; use a fresh market then. Each market's
    # events are in its shard's stream (one JB_EVT without shards).
    market_id, n = market, 1
    while True:
        async with EventWatcher(js, await market_evt_stream(js, market_id)) as watcher:
            seq = await client.create_market(market_id, "ETH", "USDC")
            (created,) = (await watcher.wait([seq]))[seq]
        if isinstance(created, MarketCreated):
            break
        assert isinstance(created, Rejected)
        if created.reason != "market_exists":
            raise RuntimeError(f"create_market rejected: {created.reason} ({created.detail})")
        n += 1
        market_id = f"{market}-{n}"
    say(f"market {market_id} (ETH/USDC) created at cmd_seq {seq}")
    result = DemoResult(market_id, [created])

    async with EventWatcher(js, await market_evt_stream(js, market_id)) as watcher:
        run = NUID().next().decode()[-8:]
        seqs = []
        for i, (account, side, price, qty) in enumerate(ORDERS, 1):
            seqs.append(await client.place(market_id, account, f"demo-{run}-{i}", side, price, qty))
            say(f"submitted  {account:<5} {side:<4} {qty:>3} @ {price}   cmd_seq {seqs[-1]}")
        outcome = await watcher.wait(seqs)

    for seq in seqs:
        for event in outcome[seq]:
            result.events.append(event)
            if isinstance(event, OrderAccepted | OrdersAccepted):  # orders_accepted: a compact batch's run
                for one in expand([event]):
                    assert isinstance(one, OrderAccepted)
                    say(f"accepted   {one.account_id:<5} order {one.order_id}, resting {one.resting_qty}")
            elif isinstance(event, Fill):
                result.fills.append(event)
            elif isinstance(event, Rejected):
                say(f"rejected   cmd_seq {seq}: {event.reason} ({event.detail})")
    say(f"{len(result.fills)} fill{'s' if len(result.fills) != 1 else ''}:")
    for f in result.fills:
        say(
            f"  trade {f.trade_id}: {f.taker_account} {f.taker_side} order {f.taker_order_id} took {f.qty} "
            f"from {f.maker_account} order {f.maker_order_id} at {f.price}"
        )
    engine = Engine()
    for event in result.events:
        engine.apply(event)
    book = engine.state.markets[market_id].books[None]
    result.bids, result.asks = book.depth("buy", 10), book.depth("sell", 10)
    say("book:")
    say("  asks  " + (", ".join(f"{q} @ {p}" for p, q in result.asks) or "-"))
    say("  bids  " + (", ".join(f"{q} @ {p}" for p, q in result.bids) or "-"))
    return result
