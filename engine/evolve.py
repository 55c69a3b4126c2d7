"""evolve(state, event) -> state: the only code that changes the state, one applier per event type.

It is the same code for live processing, engine recovery and replay, so a
replayed engine cannot differ from the live one. `evolve` mutates the state in
place and returns it: copying an order book per event would make the fold
quadratic, and nothing keeps old states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from engine.book import Book, Order
from engine.state import Market, Risk, State
from events.model import (
    Checkpoint,
    Event,
    Fill,
    MarketCreated,
    MarketSettled,
    MarketStateChanged,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrdersAccepted,
    OrdersCancelled,
    Rejected,
    RiskLimitsSet,
    RunnerAdded,
    accepted_orders,
)


def _risk(market: Market, account: str) -> Risk:
    risk = market.risk.get(account)
    if risk is None:
        risk = market.risk[account] = Risk()
    return risk


def _take_off(market: Market, book: Book, order_id: int) -> None:
    """An open order leaves the book (cancel of any kind): release its exposure."""
    order = book.orders.get(order_id)
    if order is None:
        return  # a taker's remainder that never rested
    book.remove(order_id)
    risk = market.risk[order.account_id]
    risk.open_orders -= 1
    risk.open_exposure -= market.exposure(order.side, order.price, order.qty)


def _on_market_created(state: State, e: Event) -> None:
    assert isinstance(e, MarketCreated)
    market = Market(
        e.market_id, e.kind, e.base, e.quote, e.tick_size, e.lot_size, e.min_qty, e.max_qty, e.min_price,
        e.max_price, e.band_bps,
    )  # fmt: skip
    market.book_type = e.book_type
    if e.kind == "pair":
        market.books[None] = Book()
    for runner_id, label in e.runners:
        market.runners[runner_id] = label
        market.books[runner_id] = Book()
    state.markets[e.market_id] = market


def _on_runner_added(state: State, e: Event) -> None:
    assert isinstance(e, RunnerAdded)
    market = state.markets[e.market_id]
    market.runners[e.runner_id] = e.label
    market.books[e.runner_id] = Book()


def _on_state_changed(state: State, e: Event) -> None:
    assert isinstance(e, MarketStateChanged)
    market = state.markets[e.market_id]
    market.state = e.state
    market.phase = e.phase


def _on_risk_limits(state: State, e: Event) -> None:
    assert isinstance(e, RiskLimitsSet)
    risk = _risk(state.markets[e.market_id], e.account_id)
    risk.max_order_qty = e.max_order_qty
    risk.max_open_orders = e.max_open_orders
    risk.max_open_exposure = e.max_open_exposure


def _on_accepted(state: State, e: Event) -> None:
    # Only the part that will rest goes on the book; the fills that follow
    # take from the makers they name.
    assert isinstance(e, OrderAccepted)
    market = state.markets[e.market_id]
    if e.resting_qty > 0:
        assert e.price is not None
        order = Order(
            e.order_id, e.account_id, e.client_order_id, e.side, e.price, e.resting_qty, e.runner, e.tif, e.stp,
            e.persistence, e.cmd_seq if market.book_type == "two_runner" else 0,
        )  # fmt: skip
        market.books[e.runner].add(order)
        risk = market.risk.get(e.account_id)
        if risk is None:
            risk = market.risk[e.account_id] = Risk()
        risk.open_orders += 1
        risk.open_exposure += (
            e.price * e.resting_qty if market.kind == "pair" else market.exposure(e.side, e.price, e.resting_qty)
        )
    mine = market.client_orders.get(e.account_id)
    if mine is None:
        mine = market.client_orders[e.account_id] = {}
    mine[e.client_order_id] = e.order_id
    market.next_order_id = e.order_id + 1


def _on_orders_accepted(state: State, e: Event) -> None:
    """A compact run folds as the order_accepted events it stands for, through the same applier, so the two
    logs leave the same books, risk and client ids."""
    assert isinstance(e, OrdersAccepted)
    for one in accepted_orders(e):
        _on_accepted(state, one)


def _on_amended(state: State, e: Event) -> None:
    assert isinstance(e, OrderAmended)
    market = state.markets[e.market_id]
    book = market.books[e.runner]
    order = book.orders[e.order_id]
    risk = market.risk[e.account_id]
    risk.open_exposure -= market.exposure(order.side, order.price, order.qty)
    if e.priority == "kept":
        order.qty = e.qty
        risk.open_exposure += market.exposure(order.side, order.price, order.qty)
        return
    book.remove(e.order_id)
    risk.open_orders -= 1
    order.price = e.price
    order.qty = e.resting_qty
    if market.book_type == "two_runner":  # only there does arrival order two books' equal prices
        order.arrival = e.cmd_seq
    if e.resting_qty > 0:
        book.add(order)
        risk.open_orders += 1
        risk.open_exposure += market.exposure(order.side, order.price, order.qty)


def _position(market: Market, account: str, side: str, price: int, qty: int, runner: str | None) -> None:
    if market.kind == "pair":
        pos = market.positions.get(account)
        if pos is None:
            pos = market.positions[account] = [0, 0]
        if side == "buy":
            pos[0] += qty
            pos[1] -= price * qty
        else:
            pos[0] -= qty
            pos[1] += price * qty
        return
    assert runner is not None
    book = market.positions.get(account)
    if book is None:
        book = market.positions[account] = {}
    wl = book.get(runner)
    if wl is None:
        wl = book[runner] = [0, 0]
    if side == "back":
        wl[0] += qty * (price - 100)
        wl[1] -= qty * 100
    else:
        wl[0] -= qty * (price - 100)
        wl[1] += qty * 100


def _on_implied_fill(market: Market, e: Fill) -> None:
    """A two_runner fill through the implied price: the maker's book, and each party's own runner's figures.

    The figures come straight from the two stakes (the maker's paid out if the taker's runner wins, the
    taker's if the maker's does), so the fill adds exactly 0 to the sum of P&L whoever wins.
    """
    book = market.books[e.maker_runner]
    maker = book.reduce(e.maker_order_id, e.maker_qty)
    risk = market.risk[maker.account_id]
    risk.open_exposure -= market.exposure(maker.side, maker.price, e.maker_qty)
    if maker.qty <= 0:
        risk.open_orders -= 1
    book.last_price = e.price
    market.next_trade_id = e.trade_id + 1
    sign = 1 if e.taker_side == "back" else -1
    for account, runner, win, lose in (
        (e.taker_account, e.runner, e.maker_stake, e.taker_stake),
        (e.maker_account, e.maker_runner, e.taker_stake, e.maker_stake),
    ):
        assert runner is not None
        mine = market.positions.get(account)
        if mine is None:
            mine = market.positions[account] = {}
        wl = mine.get(runner)
        if wl is None:
            wl = mine[runner] = [0, 0]
        wl[0] += sign * win
        wl[1] -= sign * lose


def _on_fill(state: State, e: Event) -> None:
    assert isinstance(e, Fill)
    market = state.markets[e.market_id]
    if e.implied:
        _on_implied_fill(market, e)
        return
    book = market.books[e.runner]
    maker = book.reduce(e.maker_order_id, e.qty)
    risk = market.risk[maker.account_id]
    risk.open_exposure -= market.exposure(maker.side, maker.price, e.qty)
    if maker.qty <= 0:
        risk.open_orders -= 1
    book.last_price = e.price
    market.next_trade_id = e.trade_id + 1
    _position(market, e.taker_account, e.taker_side, e.price, e.qty, e.runner)
    _position(market, e.maker_account, maker.side, e.price, e.qty, e.runner)


def _on_cancelled(state: State, e: Event) -> None:
    assert isinstance(e, OrderCancelled)
    market = state.markets[e.market_id]
    _take_off(market, market.books[e.runner], e.order_id)


def _on_mass_cancelled(state: State, e: Event) -> None:
    assert isinstance(e, OrdersCancelled)
    market = state.markets.get(e.market_id)
    if market is None:
        return  # a cancel_all over every market that found nothing
    for row in e.orders:
        _take_off(market, market.books[row[6]], row[0])


def _on_nothing(state: State, e: Event) -> None:
    pass


_EVOLVERS: Final[dict[type, Callable[[State, Event], None]]] = {
    MarketCreated: _on_market_created,
    RunnerAdded: _on_runner_added,
    MarketStateChanged: _on_state_changed,
    RiskLimitsSet: _on_risk_limits,
    OrderAccepted: _on_accepted,
    OrdersAccepted: _on_orders_accepted,
    OrderAmended: _on_amended,
    Fill: _on_fill,
    OrderCancelled: _on_cancelled,
    OrdersCancelled: _on_mass_cancelled,
    MarketSettled: _on_nothing,  # the state change before it did the work; this is the report
    Rejected: _on_nothing,
    Checkpoint: _on_nothing,
}


def apply_uncounted(state: State, event: Event) -> None:
    """The event's change to the state, without counting it as a logged event.

    A compact batch folds each order of a run as it is decided (the next
    instruction must see it) but logs the run as one event, counted once when
    the run is closed (`count_logged`).
    """
    _EVOLVERS[type(event)](state, event)


def count_logged(state: State, event: Event) -> None:
    """Count one logged event whose changes were applied by `apply_uncounted`."""
    state.last_cmd_seq = event.cmd_seq
    state.event_count += 1


def evolve(state: State, event: Event) -> State:
    _EVOLVERS[type(event)](state, event)
    state.last_cmd_seq = event.cmd_seq
    state.event_count += 1
    return state


def fold(state: State, events: list[Event]) -> State:
    """evolve over one command's events: the same appliers, the counters set once at the end."""
    evolvers = _EVOLVERS
    for event in events:
        evolvers[type(event)](state, event)
    if events:
        state.last_cmd_seq = events[-1].cmd_seq
        state.event_count += len(events)
    return state
