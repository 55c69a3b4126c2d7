"""The engine's state: markets, their books, positions and risk, and its canonical snapshot and hash.

Only `engine/evolve.py` changes a State; `engine/decide.py` only reads one.
`snapshot` is the canonical msgpack of the whole state (no iteration depends
on hashing), `restore` reverses it, and `state_hash` (its sha256) is what
checkpoints state and what snapshots are checked against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Final

import msgpack
import msgspec

from engine.book import Book, Order
from protocol.vocab import MarketKind, MarketState, Phase


@dataclass(slots=True)
class Risk:
    """One account in one market: what it has open, and the limits set for it (None: no limit)."""

    open_orders: int = 0
    open_exposure: int = 0
    max_order_qty: int | None = None
    max_open_orders: int | None = None
    max_open_exposure: int | None = None


@dataclass(slots=True)
class Market:
    market_id: str
    kind: MarketKind
    base: str
    quote: str
    tick_size: int
    lot_size: int
    min_qty: int
    max_qty: int
    min_price: int
    max_price: int
    band_bps: int
    runners: dict[str, str] = field(default_factory=dict)  # runner_id -> label, in creation order
    books: dict[str | None, Book] = field(default_factory=dict)  # None: the one book of a pair market
    state: MarketState = "open"
    phase: Phase = "pre"
    next_order_id: int = 1
    next_trade_id: int = 1
    # (account, client_order_id) -> order_id, kept for the market's life so a
    # repeated client_order_id is refused long after the broker's dedupe window.
    # Nested by account rather than keyed by (account, coid): a tuple per order is 60 bytes of RAM.
    client_orders: dict[str, dict[str, int]] = field(default_factory=dict)
    risk: dict[str, Risk] = field(default_factory=dict)
    # pair: account -> [net_qty, cash]; odds: account -> {runner: [pnl if it wins, pnl if it loses]}
    positions: dict[str, Any] = field(default_factory=dict)
    book_type: str = "multi_runner"  # "two_runner": each runner's orders also match the other's (implied)

    def exposure(self, side: str, price: int, qty: int) -> int:
        """Notional for pairs; for odds the stake of a back and the liability of a lay, in stake/100."""
        if self.kind == "pair":
            return price * qty
        return qty * 100 if side == "back" else qty * (price - 100)

    def find(self, order_id: int) -> tuple[Book, Order] | None:
        for book in self.books.values():
            order = book.orders.get(order_id)
            if order is not None:
                return book, order
        return None

    def open_orders(self, keep: Callable[[Order], bool]) -> list[Order]:
        found = [o for book in self.books.values() for o in book.orders.values() if keep(o)]
        found.sort(key=lambda o: o.order_id)
        return found


@dataclass(slots=True)
class State:
    markets: dict[str, Market] = field(default_factory=dict)
    last_cmd_seq: int = 0  # the newest command whose events are folded in
    event_count: int = 0  # events folded in so far; equals the JB_EVT sequence of the newest one


# An order's row in the snapshot, built in C (attrgetter makes the tuple; msgspec packs a tuple as the array
# msgpack packs a list as). A two_runner market's rows carry the order's arrival too.
_ORDER_ROW: Final = attrgetter("order_id", "account_id", "client_order_id", "qty", "tif", "stp", "persistence")
_ORDER_ROW_TWO: Final = attrgetter(
    "order_id", "account_id", "client_order_id", "qty", "tif", "stp", "persistence", "arrival"
)
_RISK_ROW: Final = attrgetter("open_orders", "open_exposure", "max_order_qty", "max_open_orders", "max_open_exposure")
_pack: Final = msgspec.msgpack.Encoder().encode


def _state_tree(state: State) -> list[Any]:
    """Everything the engine knows as plain lists and tuples, in a canonical order (no hash-order iteration).

    Tuples where the rows are built in C: they pack to the same msgpack arrays as lists. The client
    order ids sort by account, then by id within it, which is the order of the (account, id, order)
    rows sorted whole, since each (account, id) is unique.
    """
    markets: list[Any] = []
    for market_id in sorted(state.markets):
        m = state.markets[market_id]
        books = []
        row_of = _ORDER_ROW_TWO if m.book_type == "two_runner" else _ORDER_ROW
        for runner, book in m.books.items():
            sides = [
                [[abs(k), list(map(row_of, lvl.values()))] for k, lvl in levels.items()]
                for levels in (book.bids, book.asks)
            ]
            books.append([runner, book.last_price, sides])
        clients = []
        for a in sorted(m.client_orders):
            clients += [(a, c, oid) for c, oid in sorted(m.client_orders[a].items())]  # ids are unique: by id
        risk = [(a, *_RISK_ROW(r)) for a, r in sorted(m.risk.items())]
        if m.kind == "pair":
            positions = [[a, pos] for a, pos in sorted(m.positions.items())]
        else:
            positions = [[a, sorted([r, wl] for r, wl in pos.items())] for a, pos in sorted(m.positions.items())]
        row = [
            market_id, m.kind, m.base, m.quote, m.tick_size, m.lot_size, m.min_qty, m.max_qty, m.min_price,
            m.max_price, m.band_bps, list(m.runners.items()), m.state, m.phase, m.next_order_id, m.next_trade_id,
            books, clients, risk, positions,
        ]  # fmt: skip
        if m.book_type != "multi_runner":
            row.append(m.book_type)  # only then: a multi_runner market hashes as it did before issue 13
        markets.append(row)
    return [state.last_cmd_seq, state.event_count, markets]


def snapshot(state: State) -> bytes:
    """The state as canonical msgpack: equal states give equal bytes, and `restore` reverses it.

    msgspec packs the tree to the bytes msgpack-python gives for it (the same smallest int, str and
    array forms; tuples as arrays; an int outside 64 bits raises OverflowError in both), about three
    times as fast: a checkpoint packs every resting order.
    """
    return _pack(_state_tree(state))


def restore(data: bytes) -> State:
    last_cmd_seq, event_count, markets = msgpack.unpackb(data, raw=False, use_list=True)
    state = State(last_cmd_seq=last_cmd_seq, event_count=event_count)
    for row in markets:
        (market_id, kind, base, quote, tick, lot, min_qty, max_qty, min_price, max_price, band, runners, mstate,
         phase, next_order_id, next_trade_id, books, clients, risk, positions) = row[:20]  # fmt: skip
        m = Market(market_id, kind, base, quote, tick, lot, min_qty, max_qty, min_price, max_price, band)
        if len(row) > 20:
            m.book_type = row[20]
        m.runners = {r: label for r, label in runners}
        m.state, m.phase, m.next_order_id, m.next_trade_id = mstate, phase, next_order_id, next_trade_id
        for runner, last_price, sides in books:
            book = m.books[runner] = Book()
            book.last_price = last_price
            for side, levels in zip(("lay", "back") if kind == "odds" else ("buy", "sell"), sides, strict=True):
                for price, orders in levels:
                    for oid, account, coid, qty, tif, stp, persistence, *arrival in orders:
                        book.add(Order(oid, account, coid, side, price, qty, runner, tif, stp, persistence, *arrival))
        for a, c, oid in clients:
            m.client_orders.setdefault(a, {})[c] = oid
        m.risk = {a: Risk(*rest) for a, *rest in risk}
        if kind == "pair":
            m.positions = {a: pos for a, pos in positions}
        else:
            m.positions = {a: {r: wl for r, wl in pos} for a, pos in positions}
        state.markets[market_id] = m
    return state


def state_hash(state: State) -> str:
    """sha256 of the canonical snapshot (exchange-core's state hash)."""
    return hashlib.sha256(snapshot(state)).hexdigest()
