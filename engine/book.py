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

from typing import Final

import msgspec
from sortedcontainers import SortedDict

BUYING: Final = frozenset(("buy", "lay"))  # sides whose levels are keyed by -price
OPPOSITE: Final = {"buy": "sell", "sell": "buy", "back": "lay", "lay": "back"}


class Order(msgspec.Struct, gc=False):
    """An open order. A Struct, not tracked by the garbage collector (it holds only ints and strs): a
    book of 100k orders then costs a full collection nothing, and one is built in 3/4 of the time."""

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
    # The command that put the order where it is in its level (placed, or amended with priority lost):
    # two_runner markets order equal prices of two books by it. Kept (and in the snapshot) only there: elsewhere
    # 0, the shared small int, since a sequence number of its own costs every resting order 32 bytes.
    arrival: int = 0


def key(side: str, price: int) -> int:
    return -price if side in BUYING else price


class Book:
    """`bid_top` and `ask_top` are the first keys of `bids` and `asks` (None: the side is empty), kept by every
    change of levels (`add`, `remove`, and engine/fast.py's inline copies of them): the question most orders ask
    is only whether they cross, and a SortedDict's first key costs an iterator or two calls."""

    __slots__ = ("ask_top", "asks", "bid_top", "bids", "last_price", "orders")

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # -price -> {order_id: Order}   (buy / lay)
        self.asks: SortedDict = SortedDict()  # price -> {order_id: Order}    (sell / back)
        self.bid_top: int | None = None
        self.ask_top: int | None = None
        self.orders: dict[int, Order] = {}  # every open order of this book
        self.last_price: int | None = None  # of the newest fill, for dynamic price bands

    def levels(self, side: str) -> SortedDict:
        return self.bids if side in BUYING else self.asks

    def add(self, order: Order) -> None:
        if order.side in BUYING:
            levels, k = self.bids, -order.price
            level = levels.get(k)
            if level is None:
                level = levels[k] = {}
                if self.bid_top is None or k < self.bid_top:
                    self.bid_top = k
        else:
            levels, k = self.asks, order.price
            level = levels.get(k)
            if level is None:
                level = levels[k] = {}
                if self.ask_top is None or k < self.ask_top:
                    self.ask_top = k
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
        if order.side in BUYING:
            level = self.bids[-order.price]
            del level[order_id]
            if not level:
                self.drop_level(True, -order.price)
        else:
            level = self.asks[order.price]
            del level[order_id]
            if not level:
                self.drop_level(False, order.price)
        return order

    def drop_level(self, bid: bool, k: int) -> None:
        """An emptied level leaves its side (and the side's top, if it was that)."""
        levels = self.bids if bid else self.asks
        del levels[k]
        if bid:
            if k == self.bid_top:
                self.bid_top = next(iter(levels), None)
        elif k == self.ask_top:
            self.ask_top = next(iter(levels), None)

    def best(self, side: str) -> int | None:
        """Best resting price on one side."""
        top = self.bid_top if side in BUYING else self.ask_top
        return None if top is None else abs(top)

    def crosses(self, side: str, price: int) -> bool:
        """Would an incoming order at this price take anything resting (any account)?"""
        if side in BUYING:
            return self.ask_top is not None and self.ask_top <= price
        return self.bid_top is not None and self.bid_top <= -price

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
        if side in BUYING:  # the opposite side is the selling one, keyed by price
            opposite, limit = self.asks, price
        else:
            opposite, limit = self.bids, None if price is None else -price
        plan: list[tuple[Order, int]] = []
        top = self.ask_top if side in BUYING else self.bid_top
        if top is None or (limit is not None and top > limit):
            return plan, False, 0, False
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


# --- two_runner markets: the other runner's same side, through the implied price ----------------------
# A back on A at odds o is a lay on B at o / (o - 1). In price units (odds x 100) a resting order at P
# on the other runner is worth 100 * P / (P - 100) to the incoming order: kept as the exact ratio
# (num, den) and compared by cross-multiplication, so no rounding touches priority or crossing.

# (maker, taker qty, maker qty, maker stake, taker stake): stakes are hundredths of a stake unit, set
# only for implied takes (0 for direct ones, whose two qtys are equal); a taker qty of 0 is an STP cancel.
Take = tuple[Order, int, int, int, int]


def implied_stakes(maker_side: str, price: int, maker_qty: int, remaining: int) -> tuple[int, int, int, int]:
    """(taker qty, maker qty, maker stake, taker stake) of one implied take; integers, no party short-changed.

    The bet: if the taker's runner wins the maker pays its stake to the taker, else the taker pays its
    stake to the maker, so the two stakes are the whole of the money and P&L sums to 0 exactly. At the
    maker's odds P (w = P - 100) the stakes stand as 100 : w. If the maker's whole order fits, both are
    exact (maker 100 x qty, taker qty x w) and the taker's order gives up the whole units that cover
    its stake (ceil). Otherwise the taker stakes all it has left and the maker's stake is rounded in
    the maker's favour (a back risks less: floor; a lay wins more: ceil), which still keeps the taker
    within its limit because its limit is an integer bound on that same stake; the maker's order gives
    up the whole units that cover it (ceil, never more than it has).
    """
    w = price - 100
    if maker_qty * w <= 100 * remaining:
        taker_stake = maker_qty * w
        return -(-taker_stake // 100), maker_qty, 100 * maker_qty, taker_stake
    taker_stake = 100 * remaining
    maker_stake = 10_000 * remaining // w if maker_side == "back" else -(-10_000 * remaining // w)
    return remaining, -(-maker_stake // 100), maker_stake, taker_stake


def implied_crosses(other: Book, side: str, price: int) -> bool:
    """Would an incoming order at this price take the other runner's best same-side order?"""
    best = other.best(side)
    if best is None:
        return False
    num, den = 100 * best, best - 100
    return num >= price * den if side == "back" else num <= price * den


def match_two_runner(
    own: Book, other: Book, side: str, price: int | None, qty: int, account: str, stp: str, max_events: int
) -> tuple[list[Take], bool, int, bool]:
    """Book.match over both sources of a two_runner market: own runner's opposite side and the other's same side.

    Price-time priority across the two: the better effective price first (a back wants it high, a lay
    low); at an equal price the order that arrived first. Each source is walked best level first, as
    Book.match walks one; only the head levels of the two are compared. Returns (plan, stopped,
    filled, overflow) as Book.match does, with `Take` entries.
    """
    back = side == "back"
    direct = iter(own.levels(OPPOSITE[side]).items())
    implied = iter(other.levels(side).items())

    def head(it: object, is_implied: bool) -> tuple[int, int, dict[int, Order]] | None:
        item = next(it, None)  # type: ignore[call-overload]
        if item is None:
            return None
        p = abs(item[0])
        num, den = (100 * p, p - 100) if is_implied else (p, 1)
        if price is not None and (num < price * den if back else num > price * den):
            return None  # this level does not cross, so none after it does
        return num, den, item[1]

    d = head(direct, False)
    i = head(implied, True)
    plan: list[Take] = []
    remaining = qty
    overflow = False
    while d is not None or i is not None:
        if d is None or i is None:
            order: list[Order] = list((d or i)[2].values())  # type: ignore[index]
            take_d, take_i = d is not None, i is not None
        else:
            left, right = d[0] * i[1], i[0] * d[1]
            if left == right:
                order = sorted([*d[2].values(), *i[2].values()], key=lambda o: o.arrival)
                take_d = take_i = True
            elif (left > right) == back:
                order, take_d, take_i = list(d[2].values()), True, False
            else:
                order, take_d, take_i = list(i[2].values()), False, True
        for maker in order:
            if maker.account_id == account:
                if stp == "cancel_newest":
                    return plan, True, qty - remaining, overflow
                if not overflow:
                    plan.append((maker, 0, 0, 0, 0))
                if stp == "cancel_both":
                    return plan, True, qty - remaining, overflow or len(plan) > max_events
            elif maker.side == side:  # the other runner's: implied
                take = implied_stakes(side, maker.price, maker.qty, remaining)
                if not overflow:
                    plan.append((maker, *take))
                remaining -= take[0]
            else:
                take_qty = maker.qty if maker.qty < remaining else remaining
                if not overflow:
                    plan.append((maker, take_qty, take_qty, 0, 0))
                remaining -= take_qty
            if not overflow and len(plan) > max_events:
                overflow = True
            if remaining == 0:
                return plan, False, qty, overflow
        if take_d:
            d = head(direct, False)
        if take_i:
            i = head(implied, True)
    return plan, False, qty - remaining, overflow
