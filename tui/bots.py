"""Trading bots that speak to the gateway's `/ws_ctl` like any client: market makers, noise and informed traders.

They exist to make a market look alive (for the screen and demos) and to load the stack through its public
door. Each bot is its own account (`bot-mm-1`, `bot-noise-1`, `bot-inf-1`, ...) with its own
`random.Random(seed + index)`, and decides only from the last snapshot it saw of a market and from its own
orders' events: given a seed and the same snapshots (and events) it sends the same frames (tests/unit/test_bots.py).

Prices are handled as positions on a grid, so one strategy serves both kinds of market: a pair market's grid is
its multiples of `tick_size` within `min_price..max_price`; an odds market's is the odds ladder (PROTOCOL.md
section 11) within the same bounds. "Bid" is the side that buys the price (pair `buy`, odds `lay`), "ask" the
side that sells it (pair `sell`, odds `back`), as the snapshot's ladders already name them.

Attribution: every frame a bot sends carries `correlation_id` `"<bot name>:<n>"`, so the `order_response` (or
`error`) is the bot's; fills are attributed by account (the fleet's bots trade as their own accounts, so a fill
between two bots counts once for each of them).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import httpx

from protocol.odds import ODDS_LADDER
from tui.client import Connection

log = logging.getLogger("jetbook.tui.bots")

Frame = dict[str, Any]

ODDS_PRICES: Final = tuple([p for lo, hi, step in ODDS_LADDER for p in range(lo, hi, step)] + [100000])

KINDS: Final = ("mm", "noise", "informed")
PREFIX: Final = {"mm": "bot-mm", "noise": "bot-noise", "informed": "bot-inf"}
STEP_S: Final = 0.2  # a step per bot per market every 200 ms
STEP_FAST_S: Final = 0.005  # high throughput
POLL_S: Final = 2.0  # /risk (and /fills with no_ack) and the open-orders reconciliation
FILLS_PAGE: Final = 1000
FILLS_PAGES: Final = 20  # pages per poll at most; the rest waits for the next poll
POLL_FAST_S: Final = 0.5  # high throughput: beliefs about own orders go stale faster
DISCOVER_S: Final = 3.0  # list the markets again
DEFAULT_PAIR_CENTRE: Final = 1000  # grid steps above min_price: where an empty pair book is quoted around
DEFAULT_ODDS_CENTRE: Final = 300  # odds 3.00: an empty runner's book (three runners: about even)
DEFAULT_TWO_RUNNER_CENTRE: Final = 200  # evens: an empty book of a two_runner market (two runners: even)
MM_LEVELS: Final = 3
MAX_BATCH: Final = 200  # instructions per place_orders / replace_orders (the protocol's limit)
MM_MAX_RUNNERS: Final = 8  # a market maker quotes at most this many runners of one market (open orders bounded)
NOISE_MAX_OPEN: Final = 8
RECENT_TRADES: Final = 8192  # trade ids remembered per market, to count a fill once when it is seen twice


# --- the price grid -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grid:
    """The valid prices of one market, as indices: index i is price `price(i)`; `lo..hi` are the market's bounds."""

    kind: str  # pair | odds
    tick: int
    lo: int
    hi: int
    centre: int = DEFAULT_ODDS_CENTRE  # odds: the price an empty book is quoted around

    @staticmethod
    def of(market: Frame) -> Grid:
        if market.get("kind") == "odds":
            lo = bisect.bisect_left(ODDS_PRICES, int(market.get("min_price") or 101))
            hi = bisect.bisect_right(ODDS_PRICES, int(market.get("max_price") or 100000)) - 1
            two = market.get("book_type") == "two_runner"
            return Grid("odds", 1, lo, hi, DEFAULT_TWO_RUNNER_CENTRE if two else DEFAULT_ODDS_CENTRE)
        tick = int(market.get("tick_size") or 1)
        lo = -(-int(market.get("min_price") or tick) // tick)
        hi = int(market.get("max_price") or 10**9) // tick
        return Grid("pair", tick, lo, hi)

    def price(self, i: int) -> int:
        i = min(max(i, self.lo), self.hi)
        return ODDS_PRICES[i] if self.kind == "odds" else i * self.tick

    def index(self, price: int) -> int:
        """The grid index of `price` (rounded down to the grid), within the bounds."""
        i = bisect.bisect_right(ODDS_PRICES, price) - 1 if self.kind == "odds" else price // self.tick
        return min(max(i, self.lo), self.hi)

    def default(self) -> int:
        if self.kind == "odds":
            return self.index(self.centre)
        return min(self.lo + DEFAULT_PAIR_CENTRE - 1, self.hi)


def lots(market: Frame, n: int) -> int:
    """`n` lots as a valid quantity of the market: a multiple of lot_size within min_qty..max_qty."""
    lot = int(market.get("lot_size") or 1)
    low = -(-int(market.get("min_qty") or lot) // lot) * lot
    high = int(market.get("max_qty") or 10**9) // lot * lot
    return min(max(n * lot, low), high)


@dataclass(slots=True)
class Book:
    """What a bot reads of one book in a snapshot: best prices (as grid indices) and levels."""

    runner: str | None  # None in pair markets (the wire's `runner` is absent there)
    bid_side: str
    ask_side: str
    bids: list[tuple[int, int]]  # (index, qty), best first
    asks: list[tuple[int, int]]

    @property
    def best_bid(self) -> int | None:
        return self.bids[0][0] if self.bids else None

    @property
    def best_ask(self) -> int | None:
        return self.asks[0][0] if self.asks else None

    def fair(self, grid: Grid, last: int | None) -> int:
        """Mid if both sides, else next to the one side, else the last trade, else the grid's default."""
        bb, ba = self.best_bid, self.best_ask
        if bb is not None and ba is not None:
            return (bb + ba) // 2
        if bb is not None:
            return bb + 1
        if ba is not None:
            return ba - 1
        return grid.index(last) if last is not None else grid.default()


def books_of(snapshot: Frame, grid: Grid) -> list[Book]:
    """The ladders as a bot reads them; in a two_runner market a level's implied units count as liquidity there.

    They are: a back here takes the other runner's backs too (PROTOCOL 11.1), so the fair value and the
    informed trader's sweeps see the whole price, not only the direct half.
    """
    out = []
    for ladder in snapshot.get("ladders") or []:
        runner = ladder.get("runner") or None
        out.append(Book(
            runner, ladder.get("bid_side", "buy"), ladder.get("ask_side", "sell"),
            [(grid.index(lv["price"]), lv["qty"] + (lv.get("implied_qty") or 0)) for lv in ladder.get("bids") or []],
            [(grid.index(lv["price"]), lv["qty"] + (lv.get("implied_qty") or 0)) for lv in ladder.get("asks") or []],
        ))  # fmt: skip
    return out


# --- one bot's orders in one market ---------------------------------------------------------------------------


@dataclass(slots=True)
class Order:
    runner: str | None
    side: str
    price: int
    qty: int  # open quantity as the bot believes it
    n: int  # the bot's sequence number when it placed it (orders placed after a reconciliation request are kept)
    confirmed: bool = False  # an event said it rests


@dataclass(slots=True)
class Slot:
    """One of a market maker's quotes: (runner, side, level) → the client order id quoting it."""

    coid: str | None = None


@dataclass(slots=True)
class MarketState:
    grid: Grid
    orders: dict[str, Order] = field(default_factory=dict)  # client_order_id → order
    slots: dict[tuple[str | None, str, int], Slot] = field(default_factory=dict)
    fair: dict[str | None, int] = field(default_factory=dict)  # informed traders' private fair value per book
    limits_sent: bool = False


# --- bots ------------------------------------------------------------------------------------------------------


class Bot:
    """One trading account. `step(snapshot)` returns the frames to send now; the fleet feeds it events."""

    kind: str = ""

    def __init__(self, index: int, number: int, seed: int, *, run: str = "r", fast: bool = False) -> None:
        self.name = f"{PREFIX[self.kind]}-{number}"
        self.account = self.name
        self.rng = random.Random(seed + index)
        self.run = run  # part of every client order id: ids are unique per (market, account) for the market's life
        self.fast = fast
        self.optimistic = False  # no answers come (no_ack): act as if every command did what it asked
        self.running = True
        self.sent = 0
        self.trades = 0
        self.rejects = 0
        self.responses = 0  # order_responses attributed to this bot by correlation id
        self.dropped = 0  # frames the connection's bot queue refused
        self.pnl: int | None = None
        self.pnl_by_market: dict[str, int] = {}
        self.markets: dict[str, MarketState] = {}
        self._n = 0

    def __repr__(self) -> str:
        return f"<{self.name} sent={self.sent} trades={self.trades} rejects={self.rejects} pnl={self.pnl}>"

    # --- frames ---

    def _cid(self) -> str:
        self._n += 1
        return f"{self.name}:{self._n}"

    def _frame(self, market_id: str, ctype: str, **fields: Any) -> Frame:
        return {"type": ctype, "correlation_id": self._cid(), "market_id": market_id, "account_id": self.account,
                **{k: v for k, v in fields.items() if v is not None}}  # fmt: skip

    def _place(
        self, market_id: str, ms: MarketState, book: Book, side: str, i: int, qty: int, tif: str = "gtc"
    ) -> tuple[Frame, str]:
        price = ms.grid.price(i)
        frame = self._frame(market_id, "place_order", side=side, price=price, qty=qty, runner=book.runner)
        coid = f"{self.run}-{self._n}"
        frame["client_order_id"] = coid
        if tif != "gtc":
            frame["tif"] = tif
        else:
            ms.orders[coid] = Order(book.runner, side, price, qty, self._n)
        return frame, coid

    def limits(self) -> tuple[int, int]:
        """(max_order_qty in lots, max_open_orders) the bot sets for itself and keeps below on its own."""
        return 50, 64

    def step(self, snapshot: Frame) -> list[Frame]:
        """The frames to send after seeing `snapshot` (a `snapshot` frame); [] when the market does not trade."""
        market = snapshot.get("market") or {}
        market_id = snapshot.get("market_id") or market.get("market_id")
        if not self.running or not market_id:
            return []
        ms = self.markets.get(market_id)
        if ms is None:
            ms = self.markets[market_id] = MarketState(Grid.of(market))
        out: list[Frame] = []
        if not ms.limits_sent:
            ms.limits_sent = True
            max_qty, max_open = self.limits()
            out.append(self._frame(market_id, "set_risk_limits", max_order_qty=lots(market, max_qty),
                                   max_open_orders=max_open))  # fmt: skip
        if market.get("state") != "open":
            return out
        books = books_of(snapshot, ms.grid)
        if books:
            out.extend(self.decide(market_id, market, ms, books))
        return out

    def decide(self, market_id: str, market: Frame, ms: MarketState, books: list[Book]) -> list[Frame]:
        raise NotImplementedError

    # --- events ---

    def on_event(self, market_id: str, event: Frame) -> None:
        """An event of one of the bot's orders (as an order_response or a forwarded frame shows it)."""
        ms = self.markets.get(market_id)
        if ms is None:
            return
        etype, orders = event.get("type"), ms.orders
        if etype == "fill":
            for side in ("maker", "taker"):
                coid = event.get(f"{side}_client_order_id")
                if event.get(f"{side}_account") == self.account and coid in orders:
                    left = int(event.get(f"{side}_remaining") or 0)
                    if left > 0:
                        orders[coid].qty = left
                    else:
                        del orders[coid]
            return
        coid = event.get("client_order_id")
        if etype == "order_accepted" and coid in orders:
            if event.get("resting_qty"):
                orders[coid].qty, orders[coid].confirmed = int(event["resting_qty"]), True
            else:
                del orders[coid]
        elif etype == "orders_accepted":  # a compact place_orders' run: each row an order resting untouched
            for row in event.get("orders") or []:
                if isinstance(row, list) and len(row) == 10 and row[1] in orders:
                    orders[row[1]].qty, orders[row[1]].confirmed = int(row[4]), True
        elif etype == "order_amended" and coid in orders:
            order = orders[coid]
            order.price, order.qty = int(event.get("price") or order.price), int(event.get("resting_qty") or 0)
            order.confirmed = True
            if order.qty <= 0:
                del orders[coid]
        elif etype == "order_cancelled" and isinstance(coid, str):
            orders.pop(coid, None)
        elif etype == "orders_cancelled":
            for row in event.get("orders") or []:
                orders.pop(row[2], None)
        elif etype == "rejected" and coid in orders:
            kind, reason = event.get("command_type"), event.get("reason")
            if kind in ("place_order", "place_orders") or reason in ("order_not_open", "unknown_order"):
                del orders[coid]
            else:  # an amend or cancel refused for another reason: the order stands as it was, free to retry
                orders[coid].confirmed = True

    def reconcile(self, market_id: str, open_orders: list[Frame], asked_at: int) -> None:
        """The read model's list of the bot's open orders replaces its beliefs, but for orders placed since."""
        ms = self.markets.get(market_id)
        if ms is None:
            return
        kept = {c: o for c, o in ms.orders.items() if o.n > asked_at}
        for row in open_orders:
            coid = row.get("client_order_id")
            if not coid or coid in kept:
                continue
            mine = ms.orders.get(coid)
            kept[coid] = Order(row.get("runner") or None, row["side"], int(row["price"]), int(row["open_qty"]),
                               mine.n if mine else 0, confirmed=True)  # fmt: skip
        ms.orders = kept

    def asked(self) -> int:
        """The bot's sequence number now (what a reconciliation request is stamped with)."""
        return self._n

    def open_orders(self, market_id: str | None = None) -> int:
        return sum(len(ms.orders) for m, ms in self.markets.items() if market_id in (None, m))


class MarketMaker(Bot):
    """Quotes both sides `MM_LEVELS` deep around the fair value, the whole ladder in one `place_orders`; moves
    quotes with one `replace_orders`.

    A quote is a slot (runner, side, level). A slot with no live order gets a new one; a live order whose price
    is no longer where the slot wants it, or whose size has shrunk under half (it was partly filled), is amended
    to the new price and size in one step (no moment off the book). Fills and market moves both show up as a
    difference between the wanted and the believed quotes at the next step: that is the re-quote.
    """

    kind = "mm"

    def __init__(self, index: int, number: int, seed: int, *, run: str = "r", fast: bool = False) -> None:
        super().__init__(index, number, seed, run=run, fast=fast)
        self.half_spread = 1 + self.rng.randint(0, 1)  # grid steps from fair to the first quote
        self.skew = self.rng.randint(-1, 1)  # makers disagree a little, so their quotes interleave and trade
        self.size = self.rng.randint(2, 6)  # lots per quote

    def limits(self) -> tuple[int, int]:
        return 50, MM_LEVELS * 2 * MM_MAX_RUNNERS + 8

    def decide(self, market_id: str, market: Frame, ms: MarketState, books: list[Book]) -> list[Frame]:
        places: list[Frame] = []
        amends: list[Frame] = []
        last = market.get("last_price") if market.get("kind") != "odds" else None
        two = market.get("book_type") == "two_runner"
        for i, book in enumerate(books[:MM_MAX_RUNNERS]):
            # the same book gives the same quotes: no churn. In a two_runner market longer odds on one runner are
            # shorter on the other, so the skew is mirrored: skewing both one way would cross its own quotes
            fair = book.fair(ms.grid, last) + (-self.skew if two and i else self.skew)
            for side, sign in ((book.bid_side, -1), (book.ask_side, 1)):
                for level in range(MM_LEVELS):
                    want = fair + sign * (self.half_spread + level)
                    qty = lots(market, self.size + level)
                    slot = ms.slots.setdefault((book.runner, side, level), Slot())
                    order = ms.orders.get(slot.coid) if slot.coid else None
                    if order is None:
                        instruction = self._quote(ms, book, side, want, qty)
                        slot.coid = instruction["client_order_id"]
                        places.append(instruction)
                    elif order.confirmed or self.optimistic:
                        price = ms.grid.price(want)
                        if price != order.price or order.qty * 2 < qty:
                            new_qty = qty if order.qty * 2 < qty else None
                            new_price = price if price != order.price else None
                            amends.append({"client_order_id": slot.coid, "price": new_price, "qty": new_qty})
                            order.price = price
                            if new_qty is not None:
                                order.qty = new_qty
                            order.confirmed = self.optimistic  # wait for the amend's answer before touching it again
        return [*self._batched(market_id, "place_order", places), *self._batched(market_id, "amend_order", amends)]

    def _quote(self, ms: MarketState, book: Book, side: str, i: int, qty: int) -> Frame:
        """A place instruction for one quote, remembered as the bot's open order."""
        self._n += 1
        coid, price = f"{self.run}-{self._n}", ms.grid.price(i)
        ms.orders[coid] = Order(book.runner, side, price, qty, self._n)
        instruction = {"client_order_id": coid, "side": side, "price": price, "qty": qty}
        if book.runner is not None:
            instruction["runner"] = book.runner
        return instruction

    def _batched(self, market_id: str, single: str, instructions: list[Frame]) -> list[Frame]:
        """One command for a lone quote; the whole ladder as one place_orders/replace_orders (protocol §6.14).

        A batch is one command and one atomic set of events: the engine decides the ladder in one step, and the
        venue sees one message where it saw up to 48.
        """
        if len(instructions) == 1:
            fields = {k: v for k, v in instructions[0].items() if v is not None}
            return [self._frame(market_id, single, **fields)]
        # A new ladder is sent compact (v1.3): its quotes that rest untouched come back as one orders_accepted.
        batch, extra = ("place_orders", {"compact": True}) if single == "place_order" else ("replace_orders", {})
        return [
            self._frame(
                market_id, batch, instructions=[{k: v for k, v in i.items() if v is not None} for i in chunk], **extra
            )
            for chunk in (instructions[n : n + MAX_BATCH] for n in range(0, len(instructions), MAX_BATCH))
        ]


class NoiseTrader(Bot):
    """Small random orders around the market: mostly resting limits, sometimes IOC; old ones are cancelled."""

    kind = "noise"

    def limits(self) -> tuple[int, int]:
        return 20, NOISE_MAX_OPEN + 4

    def decide(self, market_id: str, market: Frame, ms: MarketState, books: list[Book]) -> list[Frame]:
        rng = self.rng
        if rng.random() > (0.9 if self.fast else 0.35):
            return []
        if len(ms.orders) >= NOISE_MAX_OPEN:
            coid = min(ms.orders, key=lambda c: ms.orders[c].n)  # the oldest goes
            del ms.orders[coid]
            return [self._frame(market_id, "cancel_order", client_order_id=coid)]
        book = books[rng.randrange(len(books))]
        last = market.get("last_price") if market.get("kind") != "odds" else None
        fair = book.fair(ms.grid, last)
        buy = rng.random() < 0.5
        offset = rng.randint(-2, 3)  # mostly passive, now and then through the touch
        i = fair - offset if buy else fair + offset
        tif = "ioc" if rng.random() < 0.25 else "gtc"
        frame, _ = self._place(market_id, ms, book, book.bid_side if buy else book.ask_side, i,
                               lots(market, rng.randint(1, 4)), tif)  # fmt: skip
        return [frame]


class InformedTrader(Bot):
    """Holds a private fair value per book (a random walk from its seed) and, now and then, sweeps the side that is
    mispriced against it with an IOC through the book (no resting orders)."""

    kind = "informed"

    def limits(self) -> tuple[int, int]:
        return 50, 4

    def decide(self, market_id: str, market: Frame, ms: MarketState, books: list[Book]) -> list[Frame]:
        rng = self.rng
        last = market.get("last_price") if market.get("kind") != "odds" else None
        out: list[Frame] = []
        for book in books:
            fv = ms.fair.get(book.runner)
            if fv is None:
                fv = book.fair(ms.grid, last) + rng.randint(-4, 4)
            fv = min(max(fv + rng.choice((-1, 0, 0, 1)), ms.grid.lo), ms.grid.hi)
            ms.fair[book.runner] = fv
            if rng.random() > (0.5 if self.fast else 0.15):
                continue
            if book.best_ask is not None and book.best_ask < fv - 1:  # cheap: buy everything up to fv - 1
                qty = sum(q for i, q in book.asks if i <= fv - 1)
                side, i = book.bid_side, fv - 1
            elif book.best_bid is not None and book.best_bid > fv + 1:  # rich: sell down to fv + 1
                qty = sum(q for i, q in book.bids if i >= fv + 1)
                side, i = book.ask_side, fv + 1
            else:
                continue
            lot = int(market.get("lot_size") or 1)
            frame, _ = self._place(market_id, ms, book, side, i, lots(market, min(qty // lot, 50)), "ioc")
            out.append(frame)
        return out


BOT_CLASSES: Final[dict[str, type[Bot]]] = {"mm": MarketMaker, "noise": NoiseTrader, "informed": InformedTrader}


def make_bots(mm: int, noise: int, informed: int, seed: int, *, run: str = "r", fast: bool = False) -> list[Bot]:
    """The fleet's bots in a fixed order (makers, noise, informed); bot i draws from Random(seed + i)."""
    bots: list[Bot] = []
    for kind, count in (("mm", mm), ("noise", noise), ("informed", informed)):
        for number in range(1, count + 1):
            bots.append(BOT_CLASSES[kind](len(bots), number, seed, run=run, fast=fast))
    return bots


def mark_to_market(risk: Frame, market: Frame) -> int:
    """One account's P&L in one market from a /risk row: realised once settled; else the position marked.

    Pairs: cash + net_qty x last trade price (price units x lots). Odds: the mean over runners of the P&L if that
    runner wins (the snapshot shows no per-runner last price to weigh them by), in hundredths of a stake unit.
    Different units in different markets: a screen's indicator, not accounting.
    """
    if risk.get("realised_pnl") is not None:
        return int(risk["realised_pnl"])
    if market.get("state") == "voided":
        return 0  # every bet returned: nobody won or lost (the read model keeps the positions as they were)
    if market.get("kind") != "odds":
        last = market.get("last_price")
        return int(risk.get("cash") or 0) + (int(risk.get("net_qty") or 0) * int(last) if last else 0)
    wins = [int(w["pnl"]) for w in risk.get("if_wins") or []]
    return round(sum(wins) / len(wins)) if wins else 0


# --- the fleet -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Feed:
    """One traded market: its connection and the last snapshot seen."""

    market_id: str
    conn: Connection
    task: asyncio.Task[None]
    snapshot: Frame | None = None
    fills_from: dict[str, int] = field(default_factory=dict)  # bot → next /fills from_seq (no_ack)
    fills_seen: dict[str, set[int]] = field(default_factory=dict)  # bot → trade ids read at that sequence
    first_seq: int | None = None  # JB_EVT after the first snapshot: fills before it are an earlier run's


class Fleet:
    """The bots, the markets they trade (one Connection each) and the polling of /risk."""

    def __init__(
        self,
        http_url: str,
        *,
        mm: int,
        noise: int,
        informed: int,
        seed: int,
        market: str | None = None,
        no_ack: bool = False,
        high_throughput: bool = False,
        api_key: str | None = None,
        depth: int = 10,
        step_s: float | None = None,
        poll_s: float | None = None,
        run: str | None = None,
    ) -> None:
        self.http_url = http_url.rstrip("/")
        self.market = market
        self.no_ack = no_ack
        self.high_throughput = high_throughput
        self.api_key = api_key
        self.depth = depth
        self.step_s = step_s if step_s is not None else (STEP_FAST_S if high_throughput else STEP_S)
        self.poll_s = poll_s if poll_s is not None else (POLL_FAST_S if high_throughput else POLL_S)
        self.run_tag = run or _run_tag()
        self.bots: list[Bot] = make_bots(mm, noise, informed, seed, run=self.run_tag, fast=high_throughput)
        for bot in self.bots:
            bot.optimistic = no_ack
        self.by_name: dict[str, Bot] = {b.name: b for b in self.bots}
        self.by_account: dict[str, Bot] = {b.account: b for b in self.bots}
        self.feeds: dict[str, Feed] = {}
        self.unattributed = 0  # replies whose correlation id names no bot of this fleet (should stay 0)
        self.limits_refused = 0
        self._recent: dict[str, tuple[set[int], deque[int]]] = {}
        self._orders_asked: dict[str, int] = {}  # correlation id of an `orders` request → the bot's n then

    # --- control ---

    def start(self, kind: str | None = None) -> None:
        for bot in self.bots:
            if kind in (None, bot.kind):
                bot.running = True

    def pause(self, kind: str | None = None) -> int:
        """Stop the bots (of one kind, or all) and drop the frames still queued; how many were dropped.

        A connection's bot queue is shared by the bots of that market, so pausing one kind drops the other kinds'
        queued frames too: they are re-decided at the next step from a fresh snapshot, which is what a queued
        order should be anyway.
        """
        for bot in self.bots:
            if kind in (None, bot.kind):
                bot.running = False
        return sum(feed.conn.drain_bots() for feed in self.feeds.values())

    @property
    def totals(self) -> tuple[int, int, int, int]:
        """(sent, trades, rejects, pnl) over every bot; a fill between two bots counts for each."""
        return (sum(b.sent for b in self.bots), sum(b.trades for b in self.bots), sum(b.rejects for b in self.bots),
                sum(b.pnl or 0 for b in self.bots))  # fmt: skip

    # --- frames in ---

    def on_frame(self, frame: Frame) -> None:
        """Every frame of the fleet's connections; the TUI may forward frames of its own connection too."""
        ftype = frame.get("type")
        if ftype == "snapshot":
            feed = self.feeds.get(frame.get("market_id") or "")
            if feed is not None:
                feed.snapshot = frame
                if feed.first_seq is None:
                    feed.first_seq = int(frame.get("at_seq") or 0) + 1
            return
        cid = frame.get("correlation_id")
        bot = self.by_name.get(cid.split(":", 1)[0]) if isinstance(cid, str) else None
        if ftype == "order_response":
            if bot is None:
                self.unattributed += isinstance(cid, str) and cid.startswith("bot-")
            else:
                bot.responses += 1
                bot.rejects += bool(frame.get("rejected"))
            self._on_events(frame.get("events") or [])
        elif ftype == "error" and bot is not None:
            if cid in self._orders_asked:
                self._orders_asked.pop(cid, None)
            elif "risk" in str(frame.get("detail")) or frame.get("error") == "forbidden":
                self.limits_refused += 1
                log.warning("%s: %s: %s (going on without)", bot.name, frame.get("error"), frame.get("detail"))
            else:
                bot.rejects += 1
        elif ftype == "orders" and bot is not None and isinstance(cid, str):
            asked = self._orders_asked.pop(cid, None)
            if asked is not None and isinstance(frame.get("market_id"), str):
                bot.reconcile(frame["market_id"], frame.get("orders") or [], asked)

    def _on_events(self, events: list[Frame]) -> None:
        for event in events:
            market_id = event.get("market_id") or ""
            if event.get("type") == "fill":
                accounts = {event.get("maker_account"), event.get("taker_account")}
                bots = [self.by_account[a] for a in accounts if a in self.by_account]
                if bots and self._first_sight(market_id, int(event.get("trade_id") or 0)):
                    for one in bots:
                        one.trades += 1
                        one.on_event(market_id, event)
            else:
                owner = self.by_account.get(event.get("account_id") or "")
                if owner is not None:
                    owner.on_event(market_id, event)

    def _first_sight(self, market_id: str, trade_id: int) -> bool:
        seen, order = self._recent.setdefault(market_id, (set(), deque()))
        if trade_id in seen:
            return False
        seen.add(trade_id)
        order.append(trade_id)
        if len(order) > RECENT_TRADES:
            seen.discard(order.popleft())
        return True

    # --- running ---

    def ws_url(self, market_id: str) -> str:
        params: dict[str, Any] = {"market_id": market_id, "depth": self.depth}
        if self.no_ack:
            params["no_ack"] = 1
        if self.api_key:
            params["api_key"] = self.api_key
        base = self.http_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return f"{base}/ws_ctl?{urlencode(params)}"

    def _open(self, market_id: str) -> None:
        conn = Connection(self.ws_url(market_id), on_frame=self.on_frame, high_throughput=self.high_throughput,
                          name=f"bots:{market_id}")  # fmt: skip
        conn.subscribe(market_id, self.depth)
        self.feeds[market_id] = Feed(market_id, conn, asyncio.create_task(conn.run()))

    async def run(self, stop: asyncio.Event) -> None:
        """Trade until `stop` is set: discover markets, step every bot on every market, poll /risk."""
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        async with httpx.AsyncClient(base_url=self.http_url, headers=headers, timeout=5.0) as http:
            tasks = [asyncio.create_task(self._discover(http, stop)), asyncio.create_task(self._steps(stop)),
                     asyncio.create_task(self._poll(http, stop))]  # fmt: skip
            try:
                await stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(BaseException):
                        await task
                for feed in self.feeds.values():
                    await feed.conn.stop()
                for feed in self.feeds.values():
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(feed.task, 5)
                with contextlib.suppress(Exception):  # the final figures, for the summary
                    await asyncio.wait_for(self.poll_once(http), 5)

    async def _discover(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                resp = await http.get("/markets")
                resp.raise_for_status()
                for m in resp.json().get("result") or []:
                    mid = m.get("market_id")
                    if mid and mid not in self.feeds and m.get("state") == "open" and self.market in (None, mid):
                        self._open(mid)
            except (httpx.HTTPError, ValueError) as err:
                log.info("bots: list markets: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DISCOVER_S)

    async def _steps(self, stop: asyncio.Event) -> None:
        """A step per bot per market every `step_s`: the fleet's pace, whatever the socket does."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stop.is_set():
            for feed in list(self.feeds.values()):
                if feed.snapshot is None or feed.conn.state != "connected":
                    continue
                for bot in self.bots:
                    if not bot.running:
                        continue
                    for frame in bot.step(feed.snapshot):
                        if feed.conn.send_bot(frame):
                            bot.sent += 1
                        else:
                            bot.dropped += 1
            due += self.step_s
            delay = due - loop.time()
            if delay < -1.0:
                due = loop.time()  # fell behind by a second: do not burst to catch up
            await asyncio.sleep(max(delay, 0))  # pacing, not synchronisation

    async def _poll(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)
            if not stop.is_set():
                await self.poll_once(http)

    async def poll_once(self, http: httpx.AsyncClient) -> None:
        """P&L from /risk per bot and market; with no_ack the fills from /fills; a request to reconcile orders."""
        jobs = []
        for feed in list(self.feeds.values()):
            market = (feed.snapshot or {}).get("market") or {}
            for bot in self.bots:
                if feed.market_id not in bot.markets:
                    continue
                jobs.append(self._risk(http, bot, feed.market_id, market))
                if self.no_ack:
                    jobs.append(self._fills(http, bot, feed))
                if feed.conn.state == "connected":
                    cid = f"{bot.name}:orders-{bot.asked()}"
                    self._orders_asked[cid] = bot.asked()
                    feed.conn.send_bot({"type": "orders", "correlation_id": cid, "market_id": feed.market_id,
                                        "account_id": bot.account, "status": "open"})  # fmt: skip
        await asyncio.gather(*jobs, return_exceptions=True)
        for bot in self.bots:
            bot.pnl = sum(bot.pnl_by_market.values()) if bot.pnl_by_market else None

    async def _risk(self, http: httpx.AsyncClient, bot: Bot, market_id: str, market: Frame) -> None:
        try:
            resp = await http.get("/risk", params={"market_id": market_id, "account_id": bot.account})
            resp.raise_for_status()
            rows = resp.json().get("result", {}).get("accounts") or []
        except (httpx.HTTPError, ValueError) as err:
            log.info("%s: /risk %s: %s", bot.name, market_id, err)
            return
        for row in rows:
            if row.get("account_id") == bot.account:
                bot.pnl_by_market[market_id] = mark_to_market(row, market)

    async def _fills(self, http: httpx.AsyncClient, bot: Bot, feed: Feed) -> None:
        """With no_ack nothing answers a command: the bot's fills are read back from the read model instead.

        Pages of FILLS_PAGE (a bigger answer can pass the query service's reply size); each page starts at the last
        sequence read, since the fills of one command share a sequence, and skips the trade ids already counted.
        """
        if feed.first_seq is None:
            return
        for _ in range(FILLS_PAGES):
            start = feed.fills_from.get(bot.name, feed.first_seq)
            seen = feed.fills_seen.setdefault(bot.name, set())
            try:
                resp = await http.get("/fills", params={"market_id": feed.market_id, "account_id": bot.account,
                                                        "from_seq": start, "limit": FILLS_PAGE})  # fmt: skip
                resp.raise_for_status()
                fills = resp.json().get("result") or []
            except (httpx.HTTPError, ValueError) as err:
                log.info("%s: /fills %s: %s", bot.name, feed.market_id, err)
                return
            new = 0
            for f in fills:
                seq, trade_id = int(f.get("seq") or 0), int(f.get("trade_id") or 0)
                if seq < start or (seq == start and trade_id in seen):
                    continue
                new += 1
                bot.trades += 1
                bot.on_event(feed.market_id, {**f, "type": "fill"})
            if fills:
                last = int(fills[-1]["seq"])
                at_last = {int(f.get("trade_id") or 0) for f in fills if int(f["seq"]) == last}
                feed.fills_from[bot.name] = last
                feed.fills_seen[bot.name] = seen | at_last if last == start else at_last
            if len(fills) < FILLS_PAGE or not new:
                return


def _run_tag() -> str:
    """A short tag unique to this run, so client order ids never repeat across runs on the same market."""
    n, digits = time.time_ns() // 1_000_000, "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out
