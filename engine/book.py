"""One market's order book, and the matching loop.

Levels live in a SortedDict keyed so that iteration starts at the best price
(asks by price, bids by -price); each level is a dict of open orders in arrival
order, which gives FIFO within a level and O(1) removal from the middle on
cancel. Python dicts iterate in insertion order, so no iteration here depends
on hashing.

`match` only reads: it says which resting orders an incoming order would take
and how much. The state changes happen when the resulting events are folded in
by `evolve`, the same code path that replay uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from sortedcontainers import SortedDict


@dataclass(slots=True)
class Order:
    order_id: int
    account_id: str
    client_order_id: str
    side: str  # "buy" | "sell"
    price: int
    qty: int  # open quantity


def _key(side: str, price: int) -> int:
    return -price if side == "buy" else price


class Book:
    __slots__ = ("asks", "bids", "orders")

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # -price -> {order_id: Order}
        self.asks: SortedDict = SortedDict()  # price -> {order_id: Order}
        self.orders: dict[int, Order] = {}  # every open order of this market

    def _side(self, side: str) -> SortedDict:
        return self.bids if side == "buy" else self.asks

    def add(self, order: Order) -> None:
        levels = self._side(order.side)
        key = _key(order.side, order.price)
        level = levels.get(key)
        if level is None:
            level = levels[key] = {}
        level[order.order_id] = order
        self.orders[order.order_id] = order

    def reduce(self, order_id: int, qty: int) -> None:
        """Take qty off an open order; an order at zero leaves the book."""
        order = self.orders[order_id]
        order.qty -= qty
        if order.qty <= 0:
            self.remove(order_id)

    def remove(self, order_id: int) -> Order:
        order = self.orders.pop(order_id)
        levels = self._side(order.side)
        key = _key(order.side, order.price)
        level = levels[key]
        del level[order_id]
        if not level:
            del levels[key]
        return order

    def match(self, side: str, price: int, qty: int, max_fills: int) -> list[tuple[Order, int]] | None:
        """Price-time priority: best opposite price first, FIFO within a level, at the maker's price.

        Returns (maker, qty) pairs, or None when the order would need more than
        max_fills fills (its events would not fit in one atomic batch).
        """
        opposite = self.bids if side == "sell" else self.asks
        limit = _key("sell" if side == "buy" else "buy", price)
        fills: list[tuple[Order, int]] = []
        remaining = qty
        for key in opposite:
            if key > limit:
                break
            for maker in opposite[key].values():
                take = maker.qty if maker.qty < remaining else remaining
                fills.append((maker, take))
                if len(fills) > max_fills:
                    return None
                remaining -= take
                if remaining == 0:
                    return fills
        return fills

    def depth(self, side: str, levels: int) -> list[tuple[int, int]]:
        """Top `levels` price levels of one side as (price, total open qty), best first."""
        book = self._side(side)
        out: list[tuple[int, int]] = []
        for key in book.islice(0, levels):
            out.append((abs(key), sum(o.qty for o in book[key].values())))
        return out
