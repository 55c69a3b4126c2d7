"""One order book (a pair market, or one runner of an odds market), and the matching loop.

Levels live in a SortedDict keyed so that iteration starts at the best price:
the selling side (`sell`, and `back` in odds markets) by price, the buying side
(`buy`, `lay`) by -price. Each level is a dict of open orders in arrival order,
which gives FIFO within a level and O(1) removal from the middle on cancel.
Python dicts iterate in insertion order, so no iteration here depends on
hashing.

Odds map onto the same two sides. A back at odds o takes resting lays at odds
>= o, highest first, and a lay takes backs at <= o, lowest first: a back is a
seller of the outcome's price and a lay a buyer.

`match` only reads: it says which resting orders an incoming order would take
and how much. The state changes happen when the resulting events are folded in
by `evolve`, the same code path that replay uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sortedcontainers import SortedDict

BUYING: Final = frozenset(("buy", "lay"))  # sides whose levels are keyed by -price
OPPOSITE: Final = {"buy": "sell", "sell": "buy", "back": "lay", "lay": "back"}


@dataclass(slots=True)
class Order:
    order_id: int
    account_id: str
    client_order_id: str
    side: str  # "buy" | "sell" | "back" | "lay"
    price: int
    qty: int  # open quantity
    runner: str | None
    tif: str
    stp: str
    persistence: str


def key(side: str, price: int) -> int:
    return -price if side in BUYING else price


class Book:
    __slots__ = ("asks", "bids", "last_price", "orders")

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # -price -> {order_id: Order}   (buy / lay)
        self.asks: SortedDict = SortedDict()  # price -> {order_id: Order}    (sell / back)
        self.orders: dict[int, Order] = {}  # every open order of this book
        self.last_price: int | None = None  # of the newest fill, for dynamic price bands

    def levels(self, side: str) -> SortedDict:
        return self.bids if side in BUYING else self.asks

    def add(self, order: Order) -> None:
        levels = self.levels(order.side)
        k = key(order.side, order.price)
        level = levels.get(k)
        if level is None:
            level = levels[k] = {}
        level[order.order_id] = order
        self.orders[order.order_id] = order

    def reduce(self, order_id: int, qty: int) -> Order:
        """Take qty off an open order; an order at zero leaves the book."""
        order = self.orders[order_id]
        order.qty -= qty
        if order.qty <= 0:
            self.remove(order_id)
        return order

    def remove(self, order_id: int) -> Order:
        order = self.orders.pop(order_id)
        levels = self.levels(order.side)
        k = key(order.side, order.price)
        level = levels[k]
        del level[order_id]
        if not level:
            del levels[k]
        return order

    def best(self, side: str) -> int | None:
        """Best resting price on one side."""
        levels = self.levels(side)
        return abs(levels.peekitem(0)[0]) if levels else None

    def crosses(self, side: str, price: int) -> bool:
        """Would an incoming order at this price take anything resting (any account)?"""
        levels = self.levels(OPPOSITE[side])
        return bool(levels) and levels.peekitem(0)[0] <= key(OPPOSITE[side], price)

    def match(
        self, side: str, price: int | None, qty: int, account: str, stp: str, max_events: int
    ) -> tuple[list[tuple[Order, int]], bool, int, bool]:
        """Price-time priority: best opposite price first, FIFO within a level, at the maker's price.

        Returns (plan, stopped, filled, overflow). The plan is (maker, qty)
        pairs in walk order; qty 0 means the maker is cancelled by self-trade
        prevention instead. `stopped`: self-trade prevention ended the walk.
        `filled`: what the taker would get. `overflow`: the plan needs more
        than max_events entries (its events would not fit one atomic batch);
        the walk then only goes on counting `filled`, so a fill-or-kill order
        can still be told it would not fill. A price of None (a market order)
        takes any price.
        """
        opposite = self.levels(OPPOSITE[side])
        limit = None if price is None else key(OPPOSITE[side], price)
        plan: list[tuple[Order, int]] = []
        remaining = qty
        overflow = False
        for k in opposite:
            if limit is not None and k > limit:
                break
            for maker in opposite[k].values():
                if maker.account_id == account:
                    if stp == "cancel_newest":
                        return plan, True, qty - remaining, overflow
                    if not overflow:
                        plan.append((maker, 0))
                    if stp == "cancel_both":
                        return plan, True, qty - remaining, overflow or len(plan) > max_events
                else:
                    take = maker.qty if maker.qty < remaining else remaining
                    if not overflow:
                        plan.append((maker, take))
                    remaining -= take
                if not overflow and len(plan) > max_events:
                    overflow = True
                if remaining == 0:
                    return plan, False, qty, overflow
        return plan, False, qty - remaining, overflow

    def depth(self, side: str, levels: int) -> list[tuple[int, int]]:
        """Top `levels` price levels of one side as (price, total open qty), best first."""
        book = self.levels(side)
        out: list[tuple[int, int]] = []
        for k in book.islice(0, levels):
            out.append((abs(k), sum(o.qty for o in book[k].values())))
        return out
